// The console's only script: a click anywhere on a history row opens its time travel (its seq is
// a link, for the keyboard), and an entity's last history page follows it live (Server-Sent
// Events; each new event's row is rendered by the server). Pages work without it, but not live.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  document.addEventListener("click", (e) => {  // delegated: rows that arrive live are clickable too
    const row = e.target.closest("tr[data-href]");
    if (row && !e.target.closest("a")) location.href = row.dataset.href;
  });
  const live = document.querySelector("[data-live]");
  if (!live) return;
  const body = document.querySelector("#history tbody");
  const status = document.querySelector("#live-status");
  const source = new EventSource(live.dataset.live);
  source.onopen = () => { status.textContent = "Following live."; };
  source.onerror = () => { status.textContent = "Live updates paused; reconnecting…"; };
  const onEvent = async (message) => {
    const record = JSON.parse(message.data);
    if (record.entity_id !== live.dataset.id || body.querySelector(`tr[data-seq="${record.seq}"]`)) return;
    const answer = await fetch(live.dataset.row + "&seq=" + record.seq, { credentials: "same-origin" });
    if (!answer.ok) return;
    body.insertAdjacentHTML("beforeend", await answer.text());
    status.textContent = "Event " + record.seq + " (" + record.event + ") arrived.";
  };
  live.dataset.events.split(",").forEach((name) => source.addEventListener(name, onEvent));
});
