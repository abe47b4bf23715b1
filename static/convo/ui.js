/* Convo's page behaviour around the live chat (app.js keeps the websocket, the ordered inserts and the
   reply stream): theme toggle, drawer and panels sheet, message and code copy, the reply inspector,
   scrolling ("↓ N new"), Send/Stop and Esc, the composer (auto-grow, paste limit, offline drafts),
   notices that clear themselves, local times, keyboard shortcuts and the deleted-conversation redirect.
   Each concern is one function below; they only listen to DOM and htmx events. */
(function () {
  "use strict";

  function byId(id) { return document.getElementById(id); }
  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function composerBox() { return $("#composer textarea[name=content]"); }
  function focusComposer() { var box = composerBox(); if (box) box.focus(); return !!box; }
  function streaming() { return !!$("#reply-stream .streaming"); }
  function typingIn(el) {
    if (!el) return false;
    var tag = el.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable;
  }

  // ------------------------------------------------------------------------------------------
  // Notices: a short message that goes away by itself.
  function toast(text) {
    var box = byId("toasts");
    if (!box) return;
    var el = document.createElement("div");
    el.className = "toast";
    el.textContent = text;
    box.appendChild(el);
    setTimeout(function () { el.remove(); }, 2600);
  }
  window.convoToast = toast;

  // ------------------------------------------------------------------------------------------
  // Theme: system, light or dark, remembered (theme.js applies it before the first paint).
  var THEMES = ["system", "light", "dark"];
  var THEME_LABEL = { system: "follows the system", light: "light", dark: "dark" };
  function currentTheme() { return document.documentElement.getAttribute("data-theme") || "system"; }
  function showTheme() {
    var button = $("[data-theme-toggle]");
    if (button) button.setAttribute("aria-label", "Colour theme: " + THEME_LABEL[currentTheme()] + " (click to change)");
  }
  function setTheme(theme) {
    if (theme === "system") document.documentElement.removeAttribute("data-theme");
    else document.documentElement.setAttribute("data-theme", theme);
    try {
      if (theme === "system") window.localStorage.removeItem("convo-theme");
      else window.localStorage.setItem("convo-theme", theme);
    } catch (err) { /* not remembered */ }
    showTheme();
  }
  function nextTheme() {
    var next = THEMES[(THEMES.indexOf(currentTheme()) + 1) % THEMES.length];
    setTheme(next);
    toast("Theme: " + THEME_LABEL[next]);
  }

  // ------------------------------------------------------------------------------------------
  // Overlays on narrow screens: the conversation drawer and the panels sheet.
  var overlayOpener = null;
  function setOverlay(name, open) {
    var cls = name + "-open";
    var button = $(name === "drawer" ? "[data-drawer-open]" : "[data-panels-open]");
    var other = name === "drawer" ? "panels" : "drawer";
    if (open) setOverlay(other, false);
    document.body.classList.toggle(cls, open);
    if (button) button.setAttribute("aria-expanded", open ? "true" : "false");
    var scrim = $(".scrim");
    if (scrim) scrim.hidden = !(document.body.classList.contains("drawer-open") || document.body.classList.contains("panels-open"));
    var box = byId(name === "drawer" ? "drawer" : "panels");
    if (open && box) {
      overlayOpener = button;
      var first = $("a[href], button:not([disabled]), summary, input, textarea, select", box);
      if (first) setTimeout(function () { first.focus(); }, 20);
    } else if (!open && overlayOpener && box && box.contains(document.activeElement)) {
      overlayOpener.focus();
    }
  }
  function overlayOpen() {
    return document.body.classList.contains("drawer-open") || document.body.classList.contains("panels-open");
  }
  function closeOverlays() { setOverlay("drawer", false); setOverlay("panels", false); }

  // ------------------------------------------------------------------------------------------
  // Copy: a message as Markdown (its stored text), a code block, the last answer.
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      var ok = document.execCommand("copy");
      area.remove();
      if (ok) resolve(); else reject(new Error("copy refused"));
    });
  }
  function sessionUrl() {
    var main = byId("chat-main");
    return main ? "/c/" + encodeURIComponent(main.getAttribute("data-session-id")) + "/" : null;
  }
  function rawText(seq) {
    return fetch(sessionUrl() + "m/" + seq + "/raw/", { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    });
  }
  function copyMessage(li) {
    var seq = li.getAttribute("data-seq");
    var done = function () { toast("Copied message #" + seq + " as Markdown"); };
    var fail = function () { toast("Could not copy the message"); };
    if (navigator.clipboard && window.ClipboardItem && window.isSecureContext) {
      // The clipboard write starts inside the click (a promise of the text), as browsers require.
      var blob = rawText(seq).then(function (t) { return new Blob([t], { type: "text/plain" }); });
      navigator.clipboard.write([new ClipboardItem({ "text/plain": blob })]).then(done, function () {
        rawText(seq).then(copyText).then(done, fail);
      });
    } else {
      rawText(seq).then(copyText).then(done, fail);
    }
  }
  function copyLastAnswer() {
    var answers = $all("#message-list > li.role-assistant");
    if (!answers.length) { toast("There is no answer to copy yet"); return; }
    copyMessage(answers[answers.length - 1]);
  }
  function decorateCode(root) {
    $all(".code-head:not([data-copy])", root).forEach(function (head) {
      head.setAttribute("data-copy", "");
      var label = $(".code-lang", head);
      var button = document.createElement("button");
      button.type = "button";
      button.className = "small ghost";
      button.setAttribute("data-action", "copy-code");
      button.setAttribute("aria-label", "Copy " + (label ? label.textContent : "") + " code");
      button.textContent = "Copy code";
      head.appendChild(button);
    });
  }

  // ------------------------------------------------------------------------------------------
  // The reply inspector: what the model saw for one answer, in a dialog.
  function inspect(li) {
    var dialog = byId("inspector");
    if (!dialog) return;
    var body = byId("inspector-body");
    body.innerHTML = '<h2 id="inspector-title">What the model saw</h2><p class="hint">Loading…</p>';
    dialog.showModal();
    htmx.ajax("GET", sessionUrl() + "m/" + li.getAttribute("data-seq") + "/inspect/", { target: "#inspector-body", swap: "innerHTML" });
  }

  // ------------------------------------------------------------------------------------------
  // Scrolling: your own message scrolls into view; new content never pulls you down while you read
  // older messages: a "↓ N new" button counts it instead.
  var scroll = { atBottom: true, newCount: 0, newReply: false, lastSeq: 0 };
  function scroller() { return byId("scroller"); }
  function nearBottom(el) { return el.scrollHeight - el.scrollTop - el.clientHeight < 80; }
  function maxSeq() {
    var items = $all("#message-list > li[data-seq]");
    return items.length ? parseInt(items[items.length - 1].getAttribute("data-seq"), 10) : 0;
  }
  function showNewButton() {
    var button = byId("new-below");
    if (!button) return;
    var show = !scroll.atBottom && (scroll.newCount > 0 || scroll.newReply);
    button.hidden = !show;
    var label = $(".new-count", button);
    if (label) label.textContent = scroll.newCount > 0 ? scroll.newCount + " new" : "New reply";
  }
  function toBottom() {
    var s = scroller();
    if (s) s.scrollTop = s.scrollHeight;
    scroll.atBottom = true;
    scroll.newCount = 0;
    scroll.newReply = false;
    scroll.lastSeq = maxSeq();
    showNewButton();
  }
  function onScroll() {
    var s = scroller();
    scroll.atBottom = nearBottom(s);
    if (scroll.atBottom) { scroll.newCount = 0; scroll.newReply = false; scroll.lastSeq = maxSeq(); }
    showNewButton();
  }
  function onListChange(mutations) {
    var s = scroller();
    if (!s) return;
    var added = 0, streamed = false;
    mutations.forEach(function (m) {
      if (m.target && m.target.id === "message-list") {
        m.addedNodes.forEach(function (n) {
          if (n.nodeType === 1 && n.hasAttribute("data-seq") && parseInt(n.getAttribute("data-seq"), 10) > scroll.lastSeq) added += 1;
        });
      } else if (m.target && m.target.closest && m.target.closest("#reply-stream")) {
        streamed = true;
      }
      m.addedNodes.forEach(function (n) { if (n.nodeType === 1) { decorateCode(n.parentNode || n); localTimes(n); } });
    });
    if (scroll.atBottom) {
      // Following the conversation: stay at its end as it grows.
      s.scrollTop = s.scrollHeight;
      scroll.lastSeq = maxSeq();
    } else {
      scroll.newCount += added;
      if (added) scroll.lastSeq = maxSeq();
      if (streamed && streaming()) scroll.newReply = true;
      showNewButton();
    }
  }

  // ------------------------------------------------------------------------------------------
  // The composer: grows with its text; a paste over the limit is refused (never cut); a send while
  // disconnected stays as a draft marked "not sent" until the user retries.
  function maxChars() {
    var main = byId("chat-main");
    return main ? parseInt(main.getAttribute("data-max-chars"), 10) || 0 : 0;
  }
  // By its rows (no inline style: the CSP refuses style attributes, which htmx copies across swaps).
  function grow(box) {
    if (!box) return;
    var line = parseFloat(getComputedStyle(box).lineHeight) || 20;
    var max = Math.max(3, Math.floor((window.innerHeight * 0.4) / line));
    var rows = 1;
    box.rows = rows;
    while (box.scrollHeight > box.clientHeight + 1 && rows < max) { rows += 1; box.rows = rows; }
  }
  function prepareComposer() {
    var box = composerBox();
    if (!box || box.hasAttribute("data-ready")) return;
    box.setAttribute("data-ready", "");
    box.removeAttribute("maxlength"); // the browser would cut a long paste silently: refused below instead
    grow(box);
  }
  function refusePaste(e) {
    var box = e.target;
    var limit = maxChars();
    if (!limit || !box || box.name !== "content" || !box.closest("#composer")) return;
    var text = (e.clipboardData || window.clipboardData).getData("text") || "";
    var result = box.value.length - (box.selectionEnd - box.selectionStart) + text.length;
    var note = $("#composer .paste-refused");
    if (result > limit) {
      e.preventDefault();
      if (note) {
        note.textContent = "Not pasted: the message would be " + result.toLocaleString("en") + " characters, over the limit of " +
          limit.toLocaleString("en") + ". Shorten the text, or send it in parts.";
        note.hidden = false;
      }
    } else if (note) {
      note.hidden = true;
    }
  }
  function liveState() {
    var status = byId("live-status");
    return status ? status.getAttribute("data-state") : "live";
  }
  function markDraft(reason) {
    var status = $("#composer .draft-status");
    if (!status) return;
    $(".draft-text", status).textContent = "Not sent — " + reason;
    status.hidden = false;
  }
  function clearDraftMark() {
    var status = $("#composer .draft-status");
    if (status) status.hidden = true;
  }

  // ------------------------------------------------------------------------------------------
  // Notices clear themselves once their cause is gone: "still replying" when the reply ends,
  // "expired" when the conversation is started fresh, a field error when the text is edited.
  function tagNotices() {
    $all("#composer .notice:not([data-clears])").forEach(function (notice) {
      notice.setAttribute("data-clears", streaming() ? "reply-end" : $("#expired-banner .banner") ? "fresh" : "edit");
    });
  }
  function clearNotices() {
    $all("#composer .notice[data-clears=reply-end]").forEach(function (n) { if (!streaming()) n.remove(); });
    $all("#composer .notice[data-clears=fresh]").forEach(function (n) { if (!$("#expired-banner .banner")) n.remove(); });
  }
  function clearEditNotices() {
    $all("#composer .notice[data-clears=edit], #composer .field-error[role=alert]").forEach(function (n) { n.remove(); });
  }

  // ------------------------------------------------------------------------------------------
  // Times in the viewer's time zone (the server writes UTC): messages HH:MM, turns HH:MM:SS,
  // expiry relative ("in 30 min").
  var relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  function relativeText(date) {
    var seconds = Math.round((date.getTime() - Date.now()) / 1000);
    var abs = Math.abs(seconds);
    if (abs < 60) return relative.format(seconds, "second");
    if (abs < 3600) return relative.format(Math.round(seconds / 60), "minute");
    if (abs < 86400) return relative.format(Math.round(seconds / 3600), "hour");
    return relative.format(Math.round(seconds / 86400), "day");
  }
  function localTimes(root) {
    if (!root || !root.querySelectorAll) return;
    var list = $all("time[datetime]", root);
    if (root.matches && root.matches("time[datetime]")) list.push(root);
    list.forEach(function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (isNaN(date.getTime())) return;
      var format = el.getAttribute("data-format");
      var text;
      if (format === "relative") text = relativeText(date);
      else if (format === "seconds") text = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
      else {
        var sameDay = date.toDateString() === new Date().toDateString();
        text = sameDay ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
          : date.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
      }
      if (el.textContent !== text) el.textContent = text;
      el.title = date.toLocaleString();
      el.setAttribute("data-local", "");
    });
  }

  // ------------------------------------------------------------------------------------------
  // The timeline follows the newest turn; a turn's link shows its messages.
  function followTimeline() {
    var list = byId("turn-list");
    if (list) list.scrollTop = list.scrollHeight;
  }
  function showTurn(link, e) {
    var target = byId("msg-" + link.getAttribute("data-seq"));
    e.preventDefault();
    if (!target) { toast("That turn's messages are not loaded: use “Load earlier messages”."); return; }
    setOverlay("panels", false);
    target.scrollIntoView({ block: "start" });
    target.classList.add("highlight");
    target.setAttribute("tabindex", "-1");
    target.focus({ preventScroll: true });
    setTimeout(function () { target.classList.remove("highlight"); }, 1600);
  }

  // ------------------------------------------------------------------------------------------
  // A conversation deleted elsewhere: its panels stop being editable, and the page goes home.
  function checkGone() {
    var main = $("#chat-main.gone[data-gone-redirect]");
    if (!main) return;
    $all("#panels input, #panels textarea, #panels button, #panels select").forEach(function (el) { el.disabled = true; });
    window.location.assign(main.getAttribute("data-gone-redirect"));
  }

  // ------------------------------------------------------------------------------------------
  // Keyboard shortcuts (listed in the "?" dialog).
  function openShortcuts() { var d = byId("shortcuts"); if (d && !d.open) d.showModal(); }
  function newChat() {
    // The new chat's engine settings (its one-click button is beside them, issue 11).
    var box = byId("new-session");
    var form = box && (box.tagName === "DETAILS" ? box : $("details", box));
    if (!form) { window.location.assign("/"); return; }
    if (window.matchMedia("(max-width: 760px)").matches) setOverlay("drawer", true);
    form.open = true;
    var field = $("input:not([type=hidden]), textarea", form);
    if (field) setTimeout(function () { field.focus(); }, 30);
  }
  function search() {
    var field = $("#drawer input[type=search], input[type=search], [data-search-input]");
    if (!field) { toast("Search is not available on this page"); return; }
    if (window.matchMedia("(max-width: 760px)").matches) setOverlay("drawer", true);
    setTimeout(function () { field.focus(); if (field.select) field.select(); }, 30);
  }
  function stopReply() {
    var stop = $("#composer button.stop");
    if (!stop || !streaming()) return false;
    stop.click();
    return true;
  }
  function onKey(e) {
    var key = e.key;
    var mod = e.ctrlKey || e.metaKey;
    if ($("dialog[open]")) return; // a dialog handles its own keys (Esc closes it)
    if (mod && e.shiftKey && (key === "O" || key === "o")) { e.preventDefault(); newChat(); return; }
    if (mod && e.shiftKey && (key === "C" || key === "c")) { e.preventDefault(); copyLastAnswer(); return; }
    if (mod && !e.shiftKey && (key === "k" || key === "K")) { e.preventDefault(); search(); return; }
    if (key === "Escape" && e.shiftKey) { e.preventDefault(); focusComposer(); return; }
    if (key === "Escape") {
      if (overlayOpen()) { closeOverlays(); return; }
      if (stopReply()) { e.preventDefault(); return; }
      var menu = $("details.menu[open]");
      if (menu) { menu.open = false; $("summary", menu).focus(); }
      return;
    }
    if (typingIn(e.target) || mod || e.altKey) return;
    if (key === "?") { e.preventDefault(); openShortcuts(); }
    else if (key === "/") { if (focusComposer()) e.preventDefault(); }
  }

  // ------------------------------------------------------------------------------------------
  // Wiring.
  document.addEventListener("click", function (e) {
    var t = e.target.closest ? e.target : e.target.parentElement;
    if (!t) return;
    var el;
    if ((el = t.closest("[data-theme-toggle]"))) nextTheme();
    else if ((el = t.closest("[data-shortcuts-open]"))) openShortcuts();
    else if ((el = t.closest("[data-drawer-open]"))) setOverlay("drawer", !document.body.classList.contains("drawer-open"));
    else if ((el = t.closest("[data-panels-open]"))) setOverlay("panels", !document.body.classList.contains("panels-open"));
    else if ((el = t.closest("[data-panels-close], [data-overlay-close]"))) closeOverlays();
    else if ((el = t.closest("[data-action=copy]"))) copyMessage(el.closest("li[data-seq]"));
    else if ((el = t.closest("[data-action=inspect]"))) inspect(el.closest("li[data-seq]"));
    else if ((el = t.closest("[data-action=copy-code]"))) {
      var pre = el.closest(".code-block").querySelector("pre");
      copyText(pre ? pre.textContent : "").then(function () { toast("Code copied"); }, function () { toast("Could not copy the code"); });
    } else if ((el = t.closest("[data-copy-from]"))) {
      var source = byId(el.getAttribute("data-copy-from"));
      copyText(source ? source.value : "").then(function () { toast("Key copied"); }, function () { toast("Could not copy: select the key and copy it"); });
    } else if ((el = t.closest("[data-action=resend]"))) {
      var form = byId("composer");
      if (form) { clearDraftMark(); form.requestSubmit(); }
    } else if ((el = t.closest("#new-below"))) { toBottom(); }
    else if ((el = t.closest(".turn-link[data-seq]"))) showTurn(el, e);
    else if ((el = t.closest("#drawer a[href]")) && document.body.classList.contains("drawer-open")) setOverlay("drawer", false);
    var open = $("details.menu[open]");
    if (open && !open.contains(t)) open.open = false;
  });
  document.addEventListener("keydown", onKey);
  document.addEventListener("paste", refusePaste, true);
  document.addEventListener("input", function (e) {
    if (e.target && e.target.name === "content" && e.target.closest("#composer")) {
      grow(e.target);
      clearEditNotices();
      var note = $("#composer .paste-refused");
      if (note && e.inputType !== "insertFromPaste") note.hidden = true;
    }
  });

  // After Send, Stop, Regenerate and Retry the keyboard goes back to the message box, also when the
  // live update that follows replaces the button that had focus.
  var returnFocus = false;
  function settleFocus() {
    if (!returnFocus) return;
    var active = document.activeElement;
    if (!active || active === document.body || active.closest("#reply-area, #composer .stop, #stop-form")) focusComposer();
  }
  document.addEventListener("htmx:beforeRequest", function (e) {
    var el = e.detail.elt;
    if (el && el.hasAttribute && (el.hasAttribute("data-returns-focus") || el.id === "composer")) {
      returnFocus = true;
      setTimeout(function () { returnFocus = false; }, 4000);
    }
  });
  document.addEventListener("htmx:beforeRequest", function (e) {
    var elt = e.detail.elt;
    if (!elt || elt.id !== "composer") return;
    var state = liveState();
    if (state === "disconnected" || state === "reconnecting" || state === "refused") {
      e.preventDefault();
      markDraft("you are offline. It stays here until you send it again.");
    } else {
      clearDraftMark();
    }
  });
  document.addEventListener("htmx:sendError", function (e) {
    if (e.detail.elt && e.detail.elt.id === "composer") markDraft("the server could not be reached.");
  });
  document.addEventListener("htmx:responseError", function (e) {
    if (e.detail.elt && e.detail.elt.id === "composer") markDraft("the server answered " + e.detail.xhr.status + ".");
  });
  document.addEventListener("htmx:afterSettle", function (e) {
    var target = e.detail.target;
    var elt = e.detail.elt;
    if (target && target.id === "composer") {
      prepareComposer();
      tagNotices();
      if (!$("#composer .field-error[role=alert], #composer .notice")) toBottom(); // your message is in view
      focusComposer();
    } else if (elt && elt.hasAttribute && elt.hasAttribute("data-returns-focus")) {
      focusComposer();
    }
    settleFocus();
    if (target) { decorateCode(target); localTimes(target); }
    if (target && target.id === "timeline") followTimeline();
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    var elt = e.detail.elt;
    if (elt && elt.id === "stop-form" && e.detail.successful) focusComposer();
  });
  document.addEventListener("htmx:wsAfterMessage", function () {
    settleFocus();
    clearNotices();
    followTimeline();
    localTimes(byId("panels"));
    localTimes(byId("session-header"));
    checkGone();
    var state = liveState();
    var draft = $("#composer .draft-status:not([hidden])");
    if (draft && state === "live") $(".draft-text", draft).textContent = "Not sent — the connection is back: send it now?";
  });
  document.addEventListener("htmx:wsOpen", function () {
    var draft = $("#composer .draft-status:not([hidden])");
    if (draft) $(".draft-text", draft).textContent = "Not sent — the connection is back: send it now?";
  });
  document.addEventListener("htmx:wsClose", function (e) {
    if (e.detail.event && e.detail.event.code === 4404) {
      window.location.assign("/?gone=" + encodeURIComponent((byId("chat-main") || document.body).getAttribute("data-session-id") || ""));
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    showTheme();
    prepareComposer();
    decorateCode(document);
    localTimes(document);
    followTimeline();
    setInterval(function () { $all('time[data-format="relative"]').forEach(function (el) { localTimes(el); }); }, 60000);
    var s = scroller();
    if (s) {
      s.addEventListener("scroll", onScroll, { passive: true });
      new MutationObserver(onListChange).observe(s, { childList: true, subtree: true, characterData: true });
      scroll.lastSeq = maxSeq();
    }
    // The live update that says the conversation is gone replaces the element the socket belongs to:
    // watch the layout for it rather than the socket's events.
    var layout = $(".layout.chat");
    if (layout) new MutationObserver(checkGone).observe(layout, { childList: true });
    window.addEventListener("resize", function () { if (scroll.atBottom && s) s.scrollTop = s.scrollHeight; });
  });
})();
