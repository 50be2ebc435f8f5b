/* Goldset review queue: keyboard shortcuts, drafts kept in localStorage per lease, and
 * submit-and-next with a prefetched card (the next item is already in the page, so the swap
 * is instant and the server round trip happens behind it). Needs htmx (loaded by base.html). */
(function () {
  "use strict";
  const root = document.getElementById("queue");
  if (!root) return;

  const DRAFT = "goldset:draft:";
  const SKIP_FIELDS = new Set(["csrfmiddlewaretoken", "duration_ms", "reason_flag"]);
  let shownAt = performance.now();
  let chain = Promise.resolve();
  const inflight = new Map(); /* lease id -> the card that left the screen when it was submitted */

  const $ = (sel, el) => (el || document).querySelector(sel);
  const $$ = (sel, el) => Array.from((el || document).querySelectorAll(sel));
  const currentSlot = () => $("#queue-current");
  const prefetchSlot = () => $("#queue-prefetch");
  const current = () => $("#queue-current .task-card");
  const prefetched = () => $("#queue-prefetch .task-card");

  function alertText(text) {
    const box = $("#queue-alert");
    box.innerHTML = "";
    if (text) {
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = text;
      box.appendChild(p);
    }
  }

  function typing(el) {
    if (!el || !el.tagName) return false;
    if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
    return el.tagName === "INPUT" && !["radio", "checkbox", "button", "submit", "hidden"].includes(el.type);
  }

  /* ---- drafts ---------------------------------------------------------------------------- */
  function formData(form) {
    const data = {};
    for (const [k, v] of new FormData(form)) if (!SKIP_FIELDS.has(k)) data[k] = v;
    return data;
  }

  function saveDraft(form) {
    if (!form || !form.dataset.lease) return;
    try {
      localStorage.setItem(DRAFT + form.dataset.lease, JSON.stringify(formData(form)));
    } catch (e) { /* storage full or disabled: the draft is only a convenience */ }
  }

  function dropDraft(lease) {
    try { localStorage.removeItem(DRAFT + lease); } catch (e) { /* ignore */ }
  }

  function setField(form, name, value) {
    const field = form.elements.namedItem(name);
    if (!field) return;
    if (typeof RadioNodeList !== "undefined" && field instanceof RadioNodeList) field.value = value;
    else if (field.type === "radio") field.checked = field.value === value;
    else field.value = value;
  }

  function restoreDraft(form) {
    if (!form || !form.dataset.lease) return;
    let data = null;
    try { data = JSON.parse(localStorage.getItem(DRAFT + form.dataset.lease) || "null"); } catch (e) { data = null; }
    if (!data) return;
    for (const [name, value] of Object.entries(data)) setField(form, name, value);
  }

  /* ---- showing cards --------------------------------------------------------------------- */
  function showDone() {
    const slot = currentSlot();
    if (current() || $(".queue-done", slot) || $(".queue-loading", slot)) return;
    slot.innerHTML = '<section class="card queue-done"><h2>Nothing left for you right now</h2>' +
      '<p class="muted">Items whose leases expire come back: reload later.</p></section>';
  }

  function became_current(form) {
    shownAt = performance.now();
    if (!form) return;
    restoreDraft(form);
    activateCriterion(form, firstUnscored(form));
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  }

  /* Put the prefetched card on screen; returns the card that left the screen. */
  function promote() {
    const slot = currentSlot();
    const leaving = current();
    const next = prefetched();
    if (next) {
      slot.replaceChildren(next);
    } else {
      slot.innerHTML = '<p class="queue-loading muted">Loading the next item…</p>';
    }
    became_current(next);
    return leaving;
  }

  function held() {
    return $$(".task-card[data-lease]", $("#queue-cards")).map((f) => f.dataset.lease).join(",");
  }

  function afterResponse() {
    if (!current() && prefetched()) {
      currentSlot().replaceChildren(prefetched());
      became_current(current());
    }
    if (!current() && !prefetched()) {
      const loading = $(".queue-loading", currentSlot());
      if (loading) loading.remove();
      showDone();
    }
  }

  /* ---- actions --------------------------------------------------------------------------- */
  function missing(form) {
    const data = formData(form);
    const kind = form.dataset.kind;
    if (kind === "gold") {
      if (!data.action) return "Choose what to do: a candidate's number to accept it, e to edit, w to write, x if unusable.";
      if ((data.action === "accept" || data.action === "edit") && !data.source) return "Select the candidate first (its number).";
      if ((data.action === "edit" || data.action === "write") && !(data.answer || "").trim()) return "Write the reference answer: it is empty.";
      if (data.action === "unusable" && !(data.reason || "").trim()) return "Say why the item is unusable.";
    } else if (kind === "preference") {
      if (!data.choice) return "Pick the better response (its number), t for a tie, or b if both are bad.";
    } else if (kind === "rubric") {
      const open = $$("fieldset.criterion", form).find((fs) => !$("input:checked", fs));
      if (open) {
        activateCriterion(form, open);
        return "Score every criterion: " + $("legend", open).textContent.trim() + " has no score yet.";
      }
    }
    return "";
  }

  function send(url, values, target, swap) {
    return htmx.ajax("POST", url, { source: root, target: target, swap: swap, values: values })
      .catch(() => alertText("The server could not be reached: your draft is kept in this browser, try again."));
  }

  function submit(form) {
    const problem = missing(form);
    if (problem) { alertText(problem); return; }
    alertText("");
    form.elements.namedItem("duration_ms").value = String(Math.round(performance.now() - shownAt));
    const values = formData(form);
    values.duration_ms = form.elements.namedItem("duration_ms").value;
    saveDraft(form);
    // Not form.action: the gold screen has a field named "action", which shadows the property.
    const url = form.getAttribute("action");
    inflight.set(form.dataset.lease, promote());
    chain = chain.then(() => send(url, { ...values, have: held() }, "#queue-prefetch", "innerHTML").then(afterResponse));
  }

  function skip(form) {
    alertText("");
    const url = form.dataset.skipUrl;
    promote();
    chain = chain.then(() => send(url, { have: held() }, "#queue-prefetch", "innerHTML").then(afterResponse));
  }

  function undo() {
    alertText("");
    chain = chain.then(() => send(root.dataset.undoUrl, {}, "#queue-cards", "outerHTML").then(() => became_current(current())));
  }

  function openFlag(form) {
    const details = $(".task-flag", form);
    if (!details) return;
    details.open = true;
    $(".flag-reason", details).focus();
  }

  function flag(form) {
    const input = $(".flag-reason", form);
    const target = "#flag-status-" + form.dataset.lease;
    htmx.ajax("POST", form.dataset.flagUrl, { source: root, target: target, swap: "innerHTML", values: { reason_flag: input.value } })
      .then(() => { if ($(target + " .ok")) input.value = ""; });
  }

  /* ---- per-kind keys --------------------------------------------------------------------- */
  function candidateText(form, pos) {
    const el = $('.response[data-pos="' + pos + '"] .response-text', form);
    return el ? el.textContent : null;
  }

  function gold(form, key) {
    const answer = form.elements.namedItem("answer");
    if (/^[1-9]$/.test(key)) {
      const text = candidateText(form, key);
      if (text === null) return false;
      setField(form, "source", key);
      setField(form, "action", "accept");
      answer.value = text;
      return true;
    }
    if (key === "e") {
      if (!formData(form).source) {
        if (candidateText(form, "1") === null) return false;
        setField(form, "source", "1");
      }
      setField(form, "action", "edit");
      if (!answer.value.trim()) answer.value = candidateText(form, formData(form).source) || "";
      answer.focus();
      answer.setSelectionRange(answer.value.length, answer.value.length);
      return true;
    }
    if (key === "w") {
      setField(form, "action", "write");
      setField(form, "source", "");
      answer.value = "";
      answer.focus();
      return true;
    }
    if (key === "x") {
      setField(form, "action", "unusable");
      form.elements.namedItem("reason").focus();
      return true;
    }
    return false;
  }

  function preference(form, key) {
    if (/^[1-9]$/.test(key)) {
      if (candidateText(form, key) === null) return false;
      setField(form, "choice", key);
      return true;
    }
    const map = { t: ["choice", "tie"], b: ["choice", "both_bad"], l: ["strength", "slight"], c: ["strength", "clear"] };
    if (map[key]) { setField(form, map[key][0], map[key][1]); return true; }
    if (key === "r") { form.elements.namedItem("rationale").focus(); return true; }
    return false;
  }

  function firstUnscored(form) {
    const all = $$("fieldset.criterion", form);
    return all.find((fs) => !$("input:checked", fs)) || all[0] || null;
  }

  function activateCriterion(form, fieldset) {
    if (!form || !fieldset) return;
    $$("fieldset.criterion", form).forEach((fs) => fs.classList.toggle("is-active", fs === fieldset));
    fieldset.scrollIntoView({ block: "nearest" });
  }

  function rubric(form, key) {
    const all = $$("fieldset.criterion", form);
    const active = $("fieldset.criterion.is-active", form) || all[0];
    if (!active) return false;
    const at = all.indexOf(active);
    if (/^[1-9]$/.test(key)) {
      const radios = $$("input[type=radio]", active);
      const radio = radios[Number(key) - 1];
      if (!radio) return false;
      radio.checked = true;
      const next = all.slice(at + 1).find((fs) => !$("input:checked", fs)) || all[at + 1];
      if (next) activateCriterion(form, next);
      return true;
    }
    if (key === "j" && all[at + 1]) { activateCriterion(form, all[at + 1]); return true; }
    if (key === "k" && all[at - 1]) { activateCriterion(form, all[at - 1]); return true; }
    return false;
  }

  /* ---- wiring ---------------------------------------------------------------------------- */
  document.addEventListener("keydown", (e) => {
    const help = $("#queue-help");
    const form = current();
    if (e.key === "Escape") {
      if (help.open) help.close();
      else if (typing(e.target)) e.target.blur();
      return;
    }
    if (e.key === "?" && !typing(e.target)) {
      e.preventDefault();
      if (help.open) help.close(); else help.showModal();
      return;
    }
    if (!form || help.open || !form.contains(e.target) && e.target !== document.body && typing(e.target)) return;
    if (e.key === "Enter") {
      if (e.target.tagName === "BUTTON" || e.target.tagName === "SUMMARY") return;
      if (e.target.tagName === "TEXTAREA" && !(e.ctrlKey || e.metaKey)) return;
      e.preventDefault();
      if (e.target.classList && e.target.classList.contains("flag-reason")) flag(form);
      else submit(form);
      return;
    }
    if (typing(e.target) || e.ctrlKey || e.metaKey || e.altKey) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    let handled = false;
    if (key === "s") { skip(form); handled = true; }
    else if (key === "u") { undo(); handled = true; }
    else if (key === "f") { openFlag(form); handled = true; }
    else if (form.dataset.kind === "gold") handled = gold(form, key);
    else if (form.dataset.kind === "preference") handled = preference(form, key);
    else if (form.dataset.kind === "rubric") handled = rubric(form, key);
    if (handled) {
      e.preventDefault();
      if (current() === form) saveDraft(form);
    }
  });

  /* A server error or a lost connection after the card moved on: reload both cards from the server.
   * An answer that was not stored comes back on screen (its lease is still active) with its draft. */
  function resync(message) {
    alertText(message);
    chain = chain.then(() => htmx.ajax("GET", root.dataset.nextUrl, { source: root, target: "#queue-cards", swap: "outerHTML" })
      .then(() => became_current(current()))
      .catch(() => alertText("The server cannot be reached. Your drafts are kept in this browser: reload the page later.")));
  }
  document.body.addEventListener("htmx:responseError", (e) => {
    if (root.contains(e.detail.elt) || e.detail.elt === root) resync("The server had a problem with that request; your queue was reloaded.");
  });
  document.body.addEventListener("htmx:sendError", (e) => {
    if (root.contains(e.detail.elt) || e.detail.elt === root) resync("The connection dropped; your queue was reloaded.");
  });

  /* Closing the help must not leave focus on its Close button, where Enter would not submit. */
  $("#queue-help").addEventListener("close", () => {
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  });

  root.addEventListener("input", (e) => saveDraft(e.target.closest(".task-card")));
  root.addEventListener("change", (e) => {
    const form = e.target.closest(".task-card");
    const fieldset = e.target.closest("fieldset.criterion");
    if (fieldset) activateCriterion(form, fieldset);
    saveDraft(form);
  });
  root.addEventListener("focusin", (e) => {
    const fieldset = e.target.closest && e.target.closest("fieldset.criterion");
    if (fieldset) activateCriterion(fieldset.closest(".task-card"), fieldset);
  });

  /* Mouse users get the same flow as the keyboard: buttons go through the same functions. */
  root.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action]");
    if (!button) return;
    const form = button.closest(".task-card");
    if (!form || !form.dataset.lease) return;
    e.preventDefault();
    if (button.dataset.action === "skip" && form === current()) skip(form);
    else if (button.dataset.action === "undo") undo();
    else if (button.dataset.action === "flag") flag(form);
  });
  root.addEventListener("submit", (e) => {
    const form = e.target.closest(".task-card");
    if (!form || !form.dataset.lease || form !== current()) return;
    e.preventDefault();
    submit(form);
  });

  /* The counters move at once; the server's full recount comes at most every 15 s (it scans the project). */
  function bump(stat, by) {
    const el = $('[data-stat="' + stat + '"]');
    if (el && /^\d+$/.test(el.textContent.trim())) el.textContent = String(Math.max(0, Number(el.textContent) + by));
  }
  document.body.addEventListener("goldset:submitted", (e) => {
    inflight.delete(String(e.detail.lease));
    dropDraft(e.detail.lease);
    bump("done-today", 1);
    bump("left-for-me", -1);
  });
  document.body.addEventListener("goldset:submit-failed", (e) => {
    /* The answer was refused (the alert says why): bring that card back on screen, its draft intact. */
    const lease = String(e.detail.lease);
    const card = inflight.get(lease);
    inflight.delete(lease);
    if (!card) return;
    const shown = current();
    if (shown) prefetchSlot().prepend(shown);
    currentSlot().replaceChildren(card);
    became_current(card);
  });

  became_current(current());
})();
