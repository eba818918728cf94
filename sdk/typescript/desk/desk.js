// The reference agent desktop: a page on the Baton SDK, meant to be read and copied. It logs the
// agent in, shows the calls on the DN and a card per record with its access, lets the agent edit
// and finish a record while it holds it `full`, and shows a banner while the connection is lost.
// A reload of the page resumes the session (the SDK keeps its token in sessionStorage).

import { Desk, BatonError, savedSession } from "/sdk/baton.js";

const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const cards = new Map(); // record handle -> its card element
let desk = null;

const ACCESS_TEXT = { full: "full", read_only: "read-only", revoked: "revoked" };

async function start(options) {
  const d = new Desk({ url: wsUrl, ...options });
  // Subscribed before logging in: the replay that follows the login is shown too.
  d.on("change", () => render(d));
  d.on("state", (state) => {
    $("banner").hidden = state !== "reconnecting";
    render(d); // requests wait for the connection: their buttons too
    $("status").textContent =
      state === "open" ? `Logged in as ${d.agent} on ${d.dn}` : state === "reconnecting" ? "Reconnecting…" : "Not logged in";
  });
  d.on("loggedOut", (e) => {
    showLogin(e.cause === "desktop" ? "" : `Logged out (${e.cause}).`);
  });
  await d.start();
  desk = d;
  $("login").hidden = true;
  $("desk").hidden = false;
  $("who").textContent = `${d.agent} on DN ${d.dn}`;
  render(d);
}

function showLogin(message) {
  desk = null;
  cards.clear();
  $("records").replaceChildren();
  $("desk").hidden = true;
  $("login").hidden = false;
  $("banner").hidden = true;
  $("login-error").textContent = message;
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const options = { agent: form.get("agent").trim(), dn: form.get("dn").trim() };
  for (const key of ["password", "jwt", "token"]) {
    const value = form.get(key).trim();
    if (value) options[key] = value;
  }
  $("login-error").textContent = "";
  try {
    await start(options);
    event.target.reset();
  } catch (e) {
    $("login-error").textContent =
      e instanceof BatonError ? loginRefusal(e) : `Cannot reach the server (${e.message}).`;
  }
});

function loginRefusal(e) {
  if (e.code === "dn_not_allowed") return "You may not log in on this DN.";
  if (e.retryAfterMs) return `Too many failed logins: try again in ${Math.ceil(e.retryAfterMs / 1000)} s.`;
  return "Login failed: check your agent id and password.";
}

$("logout").addEventListener("click", async () => {
  try {
    const answer = await desk.logout();
    if (answer.type === "LogoutPending") {
      $("status").textContent = `Logging out once ${answer.records.join(", ")} ${answer.records.length > 1 ? "are" : "is"} finished`;
    }
  } catch (e) {
    $("status").textContent = `Logout failed: ${e.message}`;
  }
});

function render(d) {
  const calls = [...d.calls.values()];
  $("calls").replaceChildren(
    ...(calls.length
      ? calls.map((c) => {
          const li = document.createElement("li");
          li.dataset.call = c.call;
          // A replayed call does not say its record: the record names its (customer) call.
          const record =
            c.record ?? [...d.records.values()].find((r) => r.call === (c.consultOf ?? c.call) && r.access !== "revoked")?.record;
          li.textContent = `${c.call}: ${c.state}${c.consultOf ? ` (consultation about ${c.consultOf})` : ""}${record ? `, record ${record}` : ""}`;
          return li;
        })
      : [Object.assign(document.createElement("li"), { className: "empty", textContent: "No call" })]),
  );
  for (const r of d.records.values()) {
    let card = cards.get(r.record);
    if (!card) {
      card = newCard(r.record);
      cards.set(r.record, card);
      $("records").querySelector(".empty")?.remove();
      $("records").prepend(card);
    }
    updateCard(card, r, d.state);
  }
}

function newCard(record) {
  const card = $("record-card").content.firstElementChild.cloneNode(true);
  card.dataset.record = record;
  card.querySelector(".name").textContent = `Record ${record}`;
  const result = card.querySelector(".result");
  const act = async (what, label) => {
    result.textContent = "…";
    try {
      await what();
      result.textContent = label;
    } catch (e) {
      result.textContent = refusal(e);
    }
  };
  card.querySelector(".edit").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const change = { fields: { note: form.get("note") } };
    if (form.get("call_result")) change.call_result = form.get("call_result");
    act(() => desk.updateRecord(record, change), "Saved.");
  });
  for (const button of card.querySelectorAll("[data-final]")) {
    button.addEventListener("click", () => {
      const callResult = card.querySelector("[name=call_result]").value || undefined;
      const finals = {
        processed: () => desk.recordProcessed(record, callResult ? { call_result: callResult } : {}),
        reject: () => desk.recordReject(record),
        cancel: () => desk.recordCancel(record),
        dnc: () => desk.doNotCall(record),
        reschedule: () => {
          const at = card.querySelector("[name=callback_at]").value;
          if (!at) return Promise.reject(new Error("choose the callback time first"));
          return desk.reschedule(record, new Date(at));
        },
      };
      act(finals[button.dataset.final], `Finished: ${button.textContent.toLowerCase()}.`);
    });
  }
  card.querySelector(".chain").addEventListener("click", async () => {
    try {
      const chain = await desk.chainedRecords(record);
      card.querySelector(".chained").replaceChildren(
        ...(chain.length
          ? chain.map((c) => Object.assign(document.createElement("li"), { textContent: `${c.record} (#${c.chain_n}): ${JSON.stringify(c.data)}` }))
          : [Object.assign(document.createElement("li"), { textContent: "No chained record." })]),
      );
    } catch (e) {
      result.textContent = refusal(e);
    }
  });
  return card;
}

function updateCard(card, r, state) {
  card.className = `record ${r.access}`;
  const badge = card.querySelector(".badge");
  badge.className = `badge ${r.access}`;
  badge.textContent = ACCESS_TEXT[r.access];
  card.querySelector(".call").textContent = r.final
    ? `Final: ${r.final.outcome.replaceAll("_", " ")} by ${r.final.by}.`
    : `On call ${r.call}.`;
  const rows = Object.entries({ ...r.data, ...r.context.fields });
  if (r.context.call_result) rows.push(["call result", r.context.call_result]);
  card.querySelector(".data").replaceChildren(
    ...rows.flatMap(([k, v]) => [
      Object.assign(document.createElement("dt"), { textContent: k }),
      Object.assign(document.createElement("dd"), { textContent: typeof v === "string" ? v : JSON.stringify(v) }),
    ]),
  );
  // Changes and final requests need full access; reading the chain needs any live access.
  const full = r.access === "full" && !r.final && state === "open";
  for (const el of card.querySelectorAll(".edit input, .edit button, .finals button, .finals input")) el.disabled = !full;
  card.querySelector(".chain").disabled = r.access === "revoked";
}

function refusal(e) {
  if (!(e instanceof BatonError)) return `Not sent: ${e.message}`;
  switch (e.code) {
    case "already_final":
      return `Already finished by ${e.by} (${e.outcome.replaceAll("_", " ")}).`;
    case "read_only":
      return "You can read this record but not change it (consultation).";
    case "access_denied":
      return "You no longer have this record.";
    default:
      return `Refused: ${e.message}`;
  }
}

// A reloaded page resumes the session it had, if it is still there.
const saved = savedSession();
if (saved && saved.url === wsUrl) {
  start({ agent: saved.agent, dn: saved.dn }).catch(() => showLogin("Your session has ended: please log in again."));
}
