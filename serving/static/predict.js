// The clinician's page: upload a photo with its body site, show the ranked answer, the classes
// the rules excluded and why, and the referral decision (or why the served version gives none);
// or, for a photo the gateway refused (not a usable dermoscopic lesion photo), the reason
// instead of any ranking: a 422 {detail, code, refusal} by default, a 201 with `refused` when
// the gateway runs with SKIN_REFUSAL_MODE=flag. After a result the clinician can record the
// confirmed diagnosis (POST /v1/predictions/{id}/feedback) and print the result.
"use strict";
(() => {
  const { api, call, el, pct } = Skin;
  const form = document.getElementById("predict-form");
  const status = document.getElementById("status");
  const result = document.getElementById("result");
  const refusal = document.getElementById("refusal");
  const image = document.getElementById("image");
  const preview = document.getElementById("preview");
  const feedback = document.getElementById("feedback");
  const feedbackForm = document.getElementById("feedback-form");
  const feedbackStatus = document.getElementById("feedback-status");

  image.addEventListener("change", () => {
    const file = image.files[0];
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.classList.toggle("hidden", !file);
    if (file) preview.src = URL.createObjectURL(file);
  });

  function requestId() {
    return window.crypto && crypto.randomUUID ? crypto.randomUUID()
      : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  }

  function bar(p) {
    const node = el("span", { class: "bar" });
    node.style.width = `${(12 * p).toFixed(2)}rem`; // CSSOM, not a style attribute: CSP-safe
    return node;
  }

  function showRefusal(refused, id) {
    refusal.dataset.code = refused.code;
    refusal.dataset.refusalId = id || "";
    document.getElementById("refusal-message").textContent = refused.message;
    document.getElementById("refusal-meta").textContent =
      `Reason code ${refused.code}${id ? `; record ${id}` : ""}.`;
    result.classList.add("hidden");
    feedback.classList.add("hidden"); // nothing to confirm: no diagnosis was given
    refusal.classList.remove("hidden");
  }

  function show(answer) {
    if (answer.refused) { showRefusal(answer.refused, answer.id); return; }
    result.dataset.predictionId = answer.id;
    const referral = document.getElementById("referral");
    const refer = answer.referral.refer; // null: no advice, the version has no validated thresholds
    referral.className = refer === null ? "no-advice" : refer ? "refer" : "no-refer";
    referral.dataset.refer = String(refer);
    const verdict = refer === null ? "No referral advice from this model version"
      : refer ? "Refer to a dermatologist" : "No referral needed by the thresholds";
    referral.replaceChildren(
      el("strong", { text: verdict }),
      el("div", { text: answer.referral.reason }),
    );
    // The class the version names: the most probable, or under a balanced decision rule the
    // most probable once each class is weighed against its rarity in training (the
    // probabilities shown are not changed by it).
    const named = answer.ranking.find((c) => c.code === answer.top_class);
    const decision = answer.decision || { rule: "argmax", most_probable: answer.top_class };
    const namedBox = document.getElementById("named-class");
    namedBox.dataset.rule = decision.rule;
    namedBox.replaceChildren(
      "Named: ", el("strong", { text: named ? `${named.name} (${named.code})` : String(answer.top_class) }),
      decision.rule === "balanced" && decision.most_probable !== answer.top_class
        ? ` — not the most probable class: this model version weighs each class against its ` +
          `rarity in training, so that a rare diagnosis is not swamped by moles.`
        : "");
    const rows = answer.ranking.map((c, i) => el("tr", {
      "data-code": c.code, ...(c.code === answer.top_class ? { "data-named": "true" } : {}) },
      el("td", { text: String(i + 1) }),
      el("td", { class: c.malignant ? "malignant" : "", text: `${c.name} (${c.code})` }),
      el("td", { class: "num", "data-probability": String(c.probability), text: pct(c.probability) }),
      el("td", {}, bar(c.probability)),
    ));
    document.querySelector("#ranking tbody").replaceChildren(...rows);
    const excluded = answer.excluded.map((e) => el("li", { "data-code": e.code },
      el("span", { class: e.malignant ? "malignant" : "", text: `${e.name} (${e.code}, ${pct(e.original_probability)} before the rule): ` }),
      el("span", { text: e.reason })));
    document.getElementById("excluded").replaceChildren(
      ...(excluded.length ? excluded : [el("li", { text: "none" })]));
    const card = `/model-cards/${encodeURIComponent(answer.model.version)}`;
    document.getElementById("meta").replaceChildren(
      `Prediction ${answer.id} by ${answer.model.name} version ${answer.model.version} (`,
      el("a", { id: "model-card-link", href: card, target: "_blank", text: "its model card" }),
      `: what it was trained on, how well it does, for whom less well); image ` +
      `${answer.image.width}×${answer.image.height}${answer.image.stored ? ", stored" : ""}. ` +
      answer.disclaimer);
    const clinical = answer.clinical || { used: false, unknown: [] };
    const use = document.getElementById("clinical-use");
    use.dataset.used = String(clinical.used);
    use.textContent = !clinical.used
      ? "This model version reads the photo alone: age, sex and body site did not change the ranking."
      : clinical.unknown.length
        ? `The model also read age, sex and body site; unknown to it: ${clinical.unknown.join(", ")}.`
        : "The model also read the patient's age, sex and body site.";
    document.getElementById("result-photo").src = preview.src;
    showExplanation(answer.explanation);
    const site = `${answer.body_location}${answer.age !== null ? `, age ${answer.age}` : ""}` +
      `${answer.sex !== "unknown" ? `, ${answer.sex}` : ""}`;
    document.getElementById("printed-at").textContent =
      `Classified ${new Date(answer.created_at).toLocaleString()} (${site}); ` +
      `printed ${new Date().toLocaleString()}.`;
    result.classList.remove("hidden");
    feedbackForm.reset();
    feedbackStatus.className = "";
    feedbackStatus.textContent = "";
    feedback.dataset.predictionId = answer.id;
    feedback.classList.remove("hidden");
  }

  // Where the model looked: the answer's low-resolution map of a class, smoothly scaled over
  // the photo in the browser (the photo never leaves the page for this), blue to red.
  const explainBox = document.getElementById("explain-box");
  const explainCanvas = document.getElementById("explain-canvas");
  const explainClass = document.getElementById("explain-class");
  let explained = null;

  function jet(v) {
    const c = (x) => Math.round(255 * Math.min(1, Math.max(0, x)));
    return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
  }

  function drawMap() {
    const chosen = explained.maps.find((m) => m.code === explainClass.value) || explained.maps[0];
    const photo = document.getElementById("result-photo");
    const scale = Math.min(1, 360 / photo.naturalWidth);
    const width = Math.round(photo.naturalWidth * scale), height = Math.round(photo.naturalHeight * scale);
    explainCanvas.width = width;
    explainCanvas.height = height;
    const ctx = explainCanvas.getContext("2d");
    ctx.drawImage(photo, 0, 0, width, height);
    const [rows, cols] = explained.grid;
    const small = document.createElement("canvas");
    small.width = cols;
    small.height = rows;
    const cells = small.getContext("2d").createImageData(cols, rows);
    let peak = [0, 0], best = -1;
    chosen.map.forEach((row, r) => row.forEach((v, c) => {
      const [red, green, blue] = jet(v);
      cells.data.set([red, green, blue, 115], 4 * (r * cols + c));
      if (v > best) { best = v; peak = [r, c]; }
    }));
    small.getContext("2d").putImageData(cells, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(small, 0, 0, width, height);
    explainCanvas.dataset.code = chosen.code;
    explainCanvas.dataset.peak = peak.join(",");
  }

  function showExplanation(explanation) {
    explained = explanation && explanation.available ? explanation : null;
    explainBox.classList.toggle("hidden", !explanation);
    document.getElementById("explain-note").textContent = explanation ? explanation.note : "";
    explainCanvas.classList.toggle("hidden", !explained);
    explainClass.parentElement.classList.toggle("hidden", !explained);
    if (!explained) return;
    explainClass.replaceChildren(...explained.maps.map(
      (m) => el("option", { value: m.code, text: `${m.name} (${m.code})` })));
    const photo = document.getElementById("result-photo");
    if (photo.complete && photo.naturalWidth) drawMap();
    else photo.addEventListener("load", drawMap, { once: true });
  }
  explainClass.addEventListener("change", drawMap);

  document.getElementById("print").addEventListener("click", () => window.print());

  // The confirmed diagnosis: 201 recorded (or a correction), 200 the same was already there;
  // an error (unknown id, a refused upload, an invalid value) is shown and nothing is recorded.
  feedbackForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = feedback.dataset.predictionId;
    const chosen = { diagnosis: feedbackForm.diagnosis.value,
      confirmation: feedbackForm.confirmation.value };
    feedbackStatus.className = "";
    feedbackStatus.textContent = "recording…";
    try {
      const { status: code, body } = await call(`/v1/predictions/${encodeURIComponent(id)}/feedback`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(chosen),
      });
      const what = feedbackForm.diagnosis.selectedOptions[0].textContent;
      const how = feedbackForm.confirmation.selectedOptions[0].textContent;
      feedback.dataset.revision = String(body.revision);
      feedbackStatus.textContent = code === 200
        ? `Already recorded: ${what}, confirmed by ${how} (revision ${body.revision}).`
        : `Recorded: ${what}, confirmed by ${how} (revision ${body.revision}).`;
      feedbackStatus.className = "ok";
    } catch (err) {
      feedbackStatus.className = "error";
      feedbackStatus.textContent = `Not recorded: ${err.message}`;
    }
  });

  // /readyz (no API key) says whether answers carry referral advice: warn before any upload.
  async function referralNotice() {
    const notice = document.getElementById("referral-notice");
    try {
      const ready = await (await fetch("/readyz")).json();
      notice.textContent = ready.referral_advice === false
        ? `No referral advice: ${ready.referral}. The ranking is still shown.` : "";
      notice.classList.toggle("hidden", ready.referral_advice !== false);
    } catch (err) {
      notice.classList.add("hidden");
    }
  }
  referralNotice();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData();
    data.append("image", image.files[0]);
    data.append("body_location", form.body_location.value);
    if (form.age.value !== "") data.append("age", form.age.value);
    data.append("sex", form.sex.value);
    data.append("consent_to_store_image", String(form.consent_to_store_image.checked));
    data.append("explain", String(form.explain.checked));
    status.className = "";
    status.textContent = "classifying…";
    result.classList.add("hidden");
    refusal.classList.add("hidden");
    feedback.classList.add("hidden");
    try {
      const answer = await api("/v1/predictions", {
        method: "POST", body: data, headers: { "Idempotency-Key": requestId() },
      });
      show(answer);
      status.textContent = answer.refused ? "refused: no diagnosis" : "done";
    } catch (err) {
      const refused = err.body && err.body.refusal;
      if (refused) {
        showRefusal(refused, refused.id);
        status.className = "";
        status.textContent = "refused: no diagnosis";
        return;
      }
      status.className = "error";
      status.textContent = err.message;
    }
  });
})();
