/* Convo chat page: live updates over the htmx ws extension, ordered de-duplicated message inserts,
   the reconnect indicator and catch-up, and the composer's keyboard behaviour. */
(function () {
  "use strict";

  // Swap 422 (form errors) and 409 responses like successes; other errors show a notice.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "422", swap: true, error: false },
    { code: "409", swap: true, error: false },
    { code: "503", swap: true, error: false },
    { code: "[45]..", swap: false, error: true },
  ];

  /* ---- Live link: reconnect backoff and periodic resync (issue 10) -------------------------------
     The backoff counts attempts that failed to deliver anything: it is reset only once a frame has
     arrived on the new socket, never by the open itself (a socket that opens and is closed at once,
     e.g. by a server that cannot send its catch-up, must not reconnect at full speed forever). The
     extension's own counter is reset on every open, so its delay function reads ours instead. */
  var live = {
    socket: null, retries: 0, timer: null, opened: false,
    received: false, helloSent: false, syncTimer: null, autoDelay: null,
  };
  window.convoLive = live;

  // Exponential backoff with jitter: 0.5-1x of 500 ms * 2^n, capped at 15 s.
  function reconnectDelay(retry) {
    var base = Math.min(15000, 500 * Math.pow(2, Math.min(retry, 8)));
    return base / 2 + Math.random() * (base / 2);
  }
  htmx.config.wsReconnectDelay = function () {
    live.autoDelay = reconnectDelay(live.retries);
    return live.autoDelay;
  };

  // Every data-resync-seconds the page tells the server what it has (the newest message, its panels'
  // version, the reply it shows running); the server answers with whatever it lacks. So a page is at
  // most that far behind even when a notification was lost (e.g. while Redis was away).
  function resyncSeconds() {
    var main = document.getElementById("chat-main");
    var value = main ? parseFloat(main.getAttribute("data-resync-seconds")) : NaN;
    return value > 0 ? value : 15;
  }
  function shownReply() {
    var running = document.querySelector("#reply-stream .streaming");
    return running ? running.getAttribute("data-reply") : null;
  }
  function startResync() {
    clearInterval(live.syncTimer);
    live.syncTimer = setInterval(function () {
      if (!live.socket || !live.helloSent) return;
      send({ type: "sync", last_seq: lastSeq(), version: panelsVersion(), reply: shownReply() });
    }, resyncSeconds() * 1000);
  }
  function linkOpened(socket) {
    live.socket = socket;
    live.received = false;
    live.opened = true;
    live.helloSent = true;
    startResync();
  }
  // The delay before the next attempt: the extension's own (it retries 1006/1011/1012/1013 itself,
  // having just asked wsReconnectDelay) or a new one for the page to wait.
  function linkClosed(auto) {
    live.socket = null;
    live.helloSent = false;
    clearInterval(live.syncTimer);
    var delay = auto && live.autoDelay !== null ? live.autoDelay : reconnectDelay(live.retries);
    live.autoDelay = null;
    live.retries += 1;
    return delay;
  }
  function linkDelivered() {
    if (!live.received) {
      live.received = true;
      live.retries = 0;
    }
  }
  /* ---- end of the live link block ---------------------------------------------------------------- */

  function byId(id) { return document.getElementById(id); }
  function seqOf(el) { return parseInt(el.getAttribute("data-seq"), 10); }
  function pane() { return byId("scroller") || byId("messages"); } // the scrolling box of the message list
  function lastSeq() {
    var b = byId("list-bounds");
    return b ? parseInt(b.getAttribute("data-last-seq"), 10) || 0 : 0;
  }
  function panelsVersion() {
    var h = byId("session-header");
    return h ? h.getAttribute("data-version") : null;
  }
  function budget() {
    var input = byId("budget");
    var value = input ? parseInt(input.value, 10) : NaN;
    return isNaN(value) ? null : value;
  }
  function nearBottom(el) { return el.scrollHeight - el.scrollTop - el.clientHeight < 80; }
  function scrollToEnd() { var p = pane(); if (p) p.scrollTop = p.scrollHeight; }

  // Messages arrive from the page's own posts, from pushes and from "load earlier": place each by
  // its sequence number and skip the ones the page already shows, so nothing appears twice.
  function insertMessages(list, fragment) {
    var p = pane();
    var stick = p && nearBottom(p);
    var before = p ? p.scrollHeight : 0;
    var prepended = false;
    Array.prototype.slice.call(fragment.children || fragment.childNodes).forEach(function (node) {
      if (node.nodeType !== 1 || !node.hasAttribute("data-seq")) return;
      if (byId(node.id)) return;
      var seq = seqOf(node);
      var next = null;
      var items = list.children;
      for (var i = 0; i < items.length; i++) {
        if (items[i].hasAttribute("data-seq") && seqOf(items[i]) > seq) { next = items[i]; break; }
      }
      if (next === list.firstElementChild && next) prepended = true;
      list.insertBefore(node, next);
      htmx.process(node); // its buttons and links (Branch, Edit, versions) work like the page's own
    });
    var hint = document.querySelector(".empty-hint");
    if (hint && list.children.length) hint.remove();
    if (!p) return;
    if (prepended && !stick) p.scrollTop += p.scrollHeight - before;
    else if (stick) scrollToEnd();
  }

  // The reply stream: while one reply runs, only its text changes (the Stop button stays the same
  // element, so keyboard focus on it survives the many updates a second).
  function updateStream(target, fragment) {
    var incoming = fragment.querySelector && fragment.querySelector(".streaming");
    var current = target.querySelector(".streaming");
    if (!incoming || !current || incoming.getAttribute("data-reply") !== current.getAttribute("data-reply")) return false;
    var stick = pane() && nearBottom(pane());
    current.querySelector(".stream-text").innerHTML = incoming.querySelector(".stream-text").innerHTML;
    current.querySelector(".typing").textContent = incoming.querySelector(".typing").textContent;
    if (stick) scrollToEnd();
    return true;
  }

  // Focus stays on a button that an update replaces (Stop, Regenerate, Retry), or goes back to the
  // composer when that button is gone.
  var focusKey = null;
  function rememberFocus(target) {
    var active = document.activeElement;
    if (active && target.contains(active) && active.hasAttribute("data-focus-key")) {
      focusKey = active.getAttribute("data-focus-key");
    }
  }
  function restoreFocus() {
    if (!focusKey) return;
    var key = focusKey;
    focusKey = null;
    if (document.activeElement && document.activeElement !== document.body) return;
    var candidates = [
      document.querySelector('[data-focus-key="' + key + '"]:not([disabled])'),
      document.querySelector('[data-focus-key="reply-stop"]'),
      document.querySelector("#composer textarea[name=content]"),
    ];
    for (var i = 0; i < candidates.length; i++) {
      if (candidates[i] && candidates[i].offsetParent !== null) { candidates[i].focus(); return; }
    }
  }

  // Pushed panels replace forms the user may be typing in (a reply's changes arrive while they type):
  // edited fields keep their text, caret and focus across the swap.
  var edits = null;
  function fieldKey(el) {
    var form = el.form;
    var key = form && form.querySelector("input[type=hidden][name=key]");
    return [form ? form.getAttribute("action") : "", key ? key.value : "", el.name, el.getAttribute("placeholder") || ""].join("|");
  }
  function saveEdits(target) {
    target.querySelectorAll("input:not([type=hidden]), textarea").forEach(function (el) {
      if (el.value === el.defaultValue) return;
      var saved = { value: el.value, focused: el === document.activeElement, start: null, end: null };
      try { saved.start = el.selectionStart; saved.end = el.selectionEnd; } catch (err) { /* number inputs */ }
      edits = edits || {};
      edits[fieldKey(el)] = saved;
    });
  }
  function restoreEdits() {
    if (!edits) return;
    var saved = edits;
    edits = null;
    document.querySelectorAll("#panels input:not([type=hidden]), #panels textarea").forEach(function (el) {
      var edit = saved[fieldKey(el)];
      if (!edit) return;
      el.value = edit.value;
      if (edit.focused) {
        el.focus();
        try { if (edit.start !== null) el.setSelectionRange(edit.start, edit.end); } catch (err) { /* number inputs */ }
      }
    });
  }
  var KEEP_EDITS = ["state-panel", "context-panel"];

  function afterReplyUpdate() {
    var stream = byId("reply-stream");
    if (!stream) return;
    var streaming = !!stream.querySelector(".streaming");
    // Screen readers wait for the stored message (announced by the message log) instead of
    // reading every streamed word.
    stream.setAttribute("aria-busy", streaming ? "true" : "false");
    // A failed reply's notice belongs to its turn: it goes once that turn is answered or superseded.
    var error = stream.querySelector(".reply-error");
    var turns = document.querySelectorAll("#turn-list > li.turn");
    var last = turns.length ? turns[turns.length - 1] : null;
    if (error && last && (last.getAttribute("data-number") !== error.getAttribute("data-turn") || last.classList.contains("complete"))) {
      error.remove();
    }
  }

  document.addEventListener("htmx:oobBeforeSwap", function (e) {
    var target = e.detail.target;
    if (!target) return;
    if (target.id === "message-list") {
      e.detail.shouldSwap = false;
      insertMessages(target, e.detail.fragment);
    } else if (target.id === "reply-stream") {
      if (updateStream(target, e.detail.fragment)) e.detail.shouldSwap = false;
      else rememberFocus(target);
    } else if (target.id === "reply-actions") {
      rememberFocus(target);
    } else if (KEEP_EDITS.indexOf(target.id) >= 0) {
      saveEdits(target);
    } else if (target.id === "sidebar-sections") {
      // A pushed sidebar the page already has (its own change, answered already) is not swapped, so
      // an open menu stays open; a newer one keeps the open menu and a title being typed.
      var frag = e.detail.fragment;
      var incoming = frag && (frag.id === "sidebar-sections" ? frag :
        (frag.querySelector && frag.querySelector("#sidebar-sections")) || frag.firstElementChild);
      var version = incoming && incoming.getAttribute && incoming.getAttribute("data-version");
      if (version && version === target.getAttribute("data-version")) { e.detail.shouldSwap = false; return; }
      var open = target.querySelector(".session-actions[open]");
      if (open) {
        var input = open.querySelector("input[name=title]");
        sidebarMenu = { id: open.closest(".session-item").getAttribute("data-session-id"),
          value: input ? input.value : null, focused: input && input === document.activeElement };
      }
    }
  });
  var sidebarMenu = null;
  function restoreSidebarMenu() {
    if (!sidebarMenu) return;
    var saved = sidebarMenu;
    sidebarMenu = null;
    var item = document.querySelector('#sidebar-sections li[data-session-id="' + CSS.escape(saved.id) + '"]');
    var menu = item && item.querySelector(".session-actions");
    if (!menu) return;
    menu.open = true;
    var input = menu.querySelector("input[name=title]");
    if (input && saved.value !== null) input.value = saved.value;
    if (input && saved.focused) input.focus();
  }
  document.addEventListener("htmx:beforeSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "reply-actions") rememberFocus(e.detail.target);
  });

  // The page shows the whole history (issue 11): messages that left the session's list stay, above a
  // divider that sits just before the first listed message (low_seq), or at the end when every message
  // after the pinned one left the list; hidden while that place is not on the page.
  function placeDivider() {
    var b = byId("list-bounds");
    var list = byId("message-list");
    var divider = byId("list-divider");
    if (!b || !list || !divider) return;
    var low = parseInt(b.getAttribute("data-low-seq"), 10);
    var unlisted = divider.getAttribute("data-unlisted") === "1" ||
      low > parseInt(divider.getAttribute("data-low-seq"), 10);
    // Before the first loaded message of the list (low_seq on; the page may start later, or, opened
    // at a search result, hold only older ones: then after them).
    var next = null;
    var items = list.querySelectorAll("li.msg");
    for (var i = 0; i < items.length; i++) {
      if (seqOf(items[i]) >= low) { next = items[i]; break; }
    }
    if (next) {
      if (divider.nextElementSibling !== next) list.insertBefore(divider, next);
    } else {
      var gap = byId("history-gap");
      var end = items.length ? items[items.length - 1].nextElementSibling : null;
      if (gap) end = gap;
      if (divider.nextElementSibling !== end) list.insertBefore(divider, end);
    }
    var prev = divider.previousElementSibling;
    while (prev && !prev.classList.contains("msg")) prev = prev.previousElementSibling;
    divider.hidden = !(unlisted && prev);
  }

  // The sidebar is the same for every page of the user (it is cached per user): the page marks its
  // own conversation.
  function markCurrent() {
    document.querySelectorAll("#sidebar .session-link").forEach(function (a) {
      var current = a.pathname === window.location.pathname;
      a.closest(".session-item").classList.toggle("current", current);
      if (current) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
  }
  // The browser tab shows the conversation's title (renamed here or in another tab).
  function syncTitle() {
    var h = document.querySelector("#session-title h1[data-title]");
    if (h) document.title = h.getAttribute("data-title") + " · Convo";
  }
  // The sidebar groups conversations by day in the viewer's time zone.
  try {
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone) document.cookie = "convo_tz=" + zone.replace(/[^A-Za-z0-9_\/+-]/g, "") + "; path=/; max-age=31536000; SameSite=Lax";
  } catch (err) { /* no Intl: the server's time zone */ }
  document.addEventListener("htmx:afterSettle", function () { markCurrent(); syncTitle(); placeDivider(); });

  function setStatus(state, text) {
    var el = byId("live-status");
    if (!el) return;
    el.setAttribute("data-state", state);
    el.textContent = text;
  }

  function send(payload) {
    if (live.socket) live.socket.send(JSON.stringify(payload));
  }

  document.addEventListener("htmx:wsConnecting", function () {
    setStatus(live.opened ? "reconnecting" : "connecting", live.opened ? "Reconnecting live updates…" : "Connecting live updates…");
  });
  document.addEventListener("htmx:wsOpen", function (e) {
    linkOpened(e.detail.socketWrapper);
    setStatus("live", "Live");
    // Tell the server what the page has: it answers with exactly the missing messages, and fresh
    // panels unless the page's are current.
    send({ type: "hello", last_seq: lastSeq(), version: panelsVersion(), budget: budget() });
  });
  document.addEventListener("htmx:wsClose", function (e) {
    var code = e.detail.event.code;
    var wrapper = e.detail.socketWrapper;
    if (code >= 4000) {
      linkClosed(false);
      setStatus("refused", code === 4404 ? "This conversation is gone." : "Live updates refused: log in again.");
      return;
    }
    var auto = [1006, 1011, 1012, 1013].indexOf(code) >= 0; // the extension retries these itself
    var delay = linkClosed(auto);
    setStatus("disconnected", "Disconnected — reconnecting in " + Math.max(1, Math.round(delay / 1000)) + " s…");
    if (!auto && byId("chat-main") && byId("chat-main").hasAttribute("ws-connect")) {
      clearTimeout(live.timer);
      live.timer = setTimeout(function () { wrapper.reconnect(); }, delay);
    }
  });
  document.addEventListener("htmx:wsAfterMessage", function () {
    linkDelivered();
    restoreSidebarMenu();
    placeDivider();
    markCurrent();
    syncTitle();
    afterReplyUpdate();
    restoreEdits();
    restoreFocus();
  });

  // The context budget is per page: the server renders pushed context panels with it.
  document.addEventListener("htmx:afterRequest", function (e) {
    var elt = e.detail.elt;
    if (elt && elt.id === "context-form") send({ type: "budget", budget: budget() });
  });

  // Parts pushed over the websocket are rendered without the request, so their plain (non-htmx) forms
  // carry no CSRF token (e.g. Continue on an expiry banner that arrived live): add the page's.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form || (form.getAttribute("method") || "").toLowerCase() !== "post") return;
    var field = form.querySelector("input[name=csrfmiddlewaretoken]");
    if (field && field.value) return;
    try {
      var token = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"];
      if (!token) return;
      if (!field) {
        field = document.createElement("input");
        field.type = "hidden";
        field.name = "csrfmiddlewaretoken";
        form.appendChild(field);
      }
      field.value = token;
    } catch (err) { /* no token: the server refuses the post, as without JavaScript */ }
  }, true);

  // Composer: Enter sends, Shift+Enter adds a line (and IME composition is left alone).
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (e.key !== "Enter" || e.shiftKey || e.isComposing || !t || t.name !== "content") return;
    var form = t.closest("#composer");
    if (!form) return;
    e.preventDefault();
    form.requestSubmit();
  });
  document.addEventListener("htmx:afterSwap", function (e) {
    restoreFocus();
    if (e.detail.target && e.detail.target.id === "composer") {
      var box = document.querySelector("#composer textarea[name=content]");
      if (box) box.focus();
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    afterReplyUpdate();
    placeDivider();
    markCurrent();
    scrollToEnd();
    var box = document.querySelector("#composer textarea[name=content]");
    if (box && window.matchMedia("(min-width: 900px)").matches) box.focus();
  });
})();
