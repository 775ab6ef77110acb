// The API key: typed by the user, kept in sessionStorage only when they ask (never localStorage:
// it must not outlive the browser session). Every API call goes through Skin.api.
"use strict";
const Skin = (() => {
  const STORE = "skin.apiKey";
  const input = document.getElementById("api-key");
  const remember = document.getElementById("remember-key");
  const stored = sessionStorage.getItem(STORE);
  if (stored) { input.value = stored; remember.checked = true; }
  const keep = () => {
    if (remember.checked && input.value.trim()) sessionStorage.setItem(STORE, input.value.trim());
    else sessionStorage.removeItem(STORE);
  };
  input.addEventListener("change", keep);
  remember.addEventListener("change", keep);

  // {status, body} of an API call with the key; an error answer (an RFC 9457 problem) throws
  // an Error whose message is "<status>: <detail>", with the status and the problem attached.
  async function call(path, options = {}) {
    const key = input.value.trim();
    if (!key) throw new Error("enter your API key first");
    const headers = { ...(options.headers || {}), "X-API-Key": key };
    const response = await fetch(path, { ...options, headers });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(`${response.status}: ${body.detail || response.statusText}`);
      error.status = response.status;
      error.body = body; // a refused photo's 422 carries the reason: {type, detail, code, refusal}
      throw error;
    }
    return { status: response.status, body };
  }

  async function api(path, options = {}) {
    return (await call(path, options)).body;
  }

  // Builds DOM nodes with textContent only, so nothing from a response is parsed as HTML.
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }
  const pct = (p) => (p === null || p === undefined ? "–" : `${(100 * p).toFixed(1)} %`);
  return { api, call, el, pct };
})();
