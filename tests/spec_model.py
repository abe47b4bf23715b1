"""A line-by-line Python port of the spec's in-memory ConversationSession (conversation_session.rs).

It is the oracle the database engine is compared with: same operations in, same lists, turns and
context windows out. Kept deliberately literal (Vec indices, the same loops) rather than clever.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Msg:
    role: str
    content: str
    tool_call_id: str | None = None

    def estimated_tokens(self) -> int:
        return len(self.content.encode("utf-8")) // 4 + 1


@dataclass
class SpecTurn:
    number: int
    user_message: Msg
    assistant_response: Msg | None = None
    tool_calls: list[Msg] = field(default_factory=list)


@dataclass
class SpecSession:
    max_messages: int = 100
    max_tokens: int = 8192
    persist_system_prompt: bool = True
    messages: list[Msg] = field(default_factory=list)
    turns: list[SpecTurn] = field(default_factory=list)

    def with_system_prompt(self, prompt: str) -> SpecSession:
        if self.persist_system_prompt:
            self.messages.insert(0, Msg("system", prompt))
        return self

    def add_message(self, message: Msg) -> None:
        if message.role == "user":
            self.turns.append(SpecTurn(len(self.turns) + 1, message))
        elif message.role == "assistant":
            if self.turns:
                self.turns[-1].assistant_response = message
        elif message.role == "tool":
            if self.turns:
                self.turns[-1].tool_calls.append(message)
        self.messages.append(message)
        self.enforce_limits()

    def get_context(self, max_tokens: int | None = None) -> list[Msg]:
        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        result: list[Msg] = []
        token_count = 0
        if self.messages and self.messages[0].role == "system":
            token_count += self.messages[0].estimated_tokens()
            result.append(self.messages[0])
        for message in reversed(self.messages):
            if message.role == "system":
                continue
            tokens = message.estimated_tokens()
            if token_count + tokens > max_tokens:
                break
            token_count += tokens
            result.append(message)
        system = result.pop(0) if result and result[0].role == "system" else None
        result.reverse()
        if system is not None:
            result.insert(0, system)
        return result

    def get_recent(self, n: int) -> list[Msg]:
        return self.messages[-n:] if n > 0 else []

    def clear_messages(self) -> None:
        keep = (
            self.messages[0]
            if self.persist_system_prompt and self.messages and self.messages[0].role == "system"
            else None
        )
        self.messages = [keep] if keep else []
        self.turns = []

    def total_tokens(self) -> int:
        return sum(m.estimated_tokens() for m in self.messages)

    def enforce_limits(self) -> None:
        while len(self.messages) > self.max_messages:
            remove_idx = 1 if self.messages and self.messages[0].role == "system" else 0
            if remove_idx < len(self.messages):
                self.messages.pop(remove_idx)
