// The rate view (keyboard choices between two images) and the stars on a row's page.
// Served from this origin (the page's CSP allows no inline script); every write is a JSON POST.
"use strict";
(function () {
  const nameBox = document.getElementById("rater");
  function rater() { return (nameBox ? nameBox.value : localStorage.getItem("zxl.rater") || "").trim(); }
  if (nameBox) {
    nameBox.value = localStorage.getItem("zxl.rater") || "";
    nameBox.addEventListener("change", () => localStorage.setItem("zxl.rater", nameBox.value.trim()));
  }
  async function post(url, body) {
    const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
                                 body: JSON.stringify(body) });
    if (!r.ok) { const e = new Error(await r.text()); e.status = r.status; throw e; }
    return r.json();
  }
  function say(text) { const s = document.getElementById("status"); if (s) s.textContent = text; }
  function count(c) {
    const el = document.getElementById("counts");
    if (el && c) { el.dataset.choices = c.choices; el.textContent = c.choices + " choices so far"; }
  }

  // ---- rate view ----
  const left = document.getElementById("left"), right = document.getElementById("right");
  let pair = null, busy = false;
  function show(p) {
    pair = p;
    for (const [side, key, size] of [[left, p.left, p.left_size], [right, p.right, p.right_size]]) {
      side.classList.remove("picked");
      side.dataset.key = key;
      side.querySelector("img").src = "/image/" + encodeURIComponent(key);
      side.querySelector(".size").textContent = size ? size[0] + "×" + size[1] + " px" : "";
    }
    document.body.dataset.pair = p.left + "\n" + p.right;
  }
  async function next() {
    const r = await (await fetch("/api/pair")).json();
    count(r.counts);
    if (r.pair) show(r.pair); else { pair = null; say(r.message); }
  }
  async function act(what) {
    if (busy) return;
    if (!rater()) {
      say("enter your name first: choices are saved under it");
      document.body.dataset.busy = "0";
      return;
    }
    busy = true;
    try {
      if (what === "undo") {
        const r = await post("/api/undo", { rater: rater() });
        count(r.counts);
        if (r.undone) { show(r.undone); say("undone"); }
        else say("nothing to undo");
      } else if (pair) {
        if (what !== null) (what === "left" ? left : right).classList.add("picked");
        // the server alone knows whether this pair was a random probe: the page does not say
        const r = await post("/api/choice", { rater: rater(), left: pair.left, right: pair.right, winner: what });
        count(r.counts);
        say(what === null ? "skipped" : "saved");
        await next();
      }
    } catch (e) {
      say("not saved: " + e.message);
      if (e.status === 409 && what !== "undo") await next();  // a pair this server did not offer: a new one
    }
    finally { busy = false; document.body.dataset.busy = "0"; }
  }
  if (left && right) {
    document.addEventListener("keydown", (e) => {
      if (e.target === nameBox) return;
      const k = e.key;
      let what;
      if (k === "ArrowLeft") what = "left";
      else if (k === "ArrowRight") what = "right";
      else if (k === "ArrowDown" || k === "s" || k === "S") what = null;
      else if (k === "u" || k === "U" || k === "Backspace") what = "undo";
      else return;
      e.preventDefault();
      document.body.dataset.busy = "1";
      act(what);
    });
    left.addEventListener("click", () => act("left"));
    right.addEventListener("click", () => act("right"));
    next();
  }

  // ---- stars on a row's page ----
  const stars = document.getElementById("stars");
  if (stars) {
    stars.addEventListener("click", async (e) => {
      const b = e.target.closest("button[data-stars]");
      if (!b) return;
      if (!rater()) { stars.querySelector(".note").textContent = "rate a pair first to give your name"; return; }
      const value = b.dataset.stars === "" ? null : parseInt(b.dataset.stars, 10);
      try {
        const r = await post("/api/stars", { rater: rater(), key: stars.dataset.key, stars: value });
        const mine = r.stars[rater()];
        stars.dataset.mine = mine || "";
        stars.querySelector(".note").textContent = mine ? mine + " stars saved" : "stars taken back";
      } catch (err) { stars.querySelector(".note").textContent = "not saved: " + err.message; }
    });
  }
})();
