// The citizen page: sign in, list the access records about the signed-in person from
// GET /v1/citizen/access-records, and check each record's inclusion proof here, in the browser,
// against the root of the signed tree head the API returns (RFC 9162 §2.1.3.2, SHA-256 by
// SubtleCrypto). The browser does not check the tree head's signature: the registry does, and
// `enlace audit verify` does independently. The person also answers requests for their
// authorisation (grant, refuse) and revokes grants (GET /v1/citizen/authorisations, POST
// /v1/citizen/authorisations/{id}/{action}). The tokens live in memory only.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const utf8 = new TextEncoder();
  const MONTHS = ["ene", "feb", "mar", "abr", "may", "jun", "jul", "ago", "sep", "oct", "nov", "dic"];
  const FIELD_WORDS = {
    name: "nombre",
    address: "dirección",
    "birth date": "fecha de nacimiento",
    "death date": "fecha de defunción",
    sex: "sexo",
    nationality: "nacionalidad",
    "civil status": "estado civil",
    "marital status": "estado civil",
    email: "correo electrónico",
    phone: "teléfono",
    income: "ingresos",
    documents: "documentos",
    run: "RUN",
    "health insurance": "previsión de salud",
    "health_insurance": "previsión de salud",
  };
  const STATES = {
    pending: "pendiente",
    granted: "autorizada",
    refused: "rechazada",
    revoked: "revocada",
  };
  const EVENTS = {
    requested: "Solicitada",
    granted: "Autorizada por usted",
    refused: "Rechazada por usted",
    revoked: "Revocada por usted",
  };
  const REFUSALS = {
    expired: "había vencido",
    revoked: "usted la había revocado",
    "another-person": "era de otra persona",
    "another-contract": "era para otro contrato",
    "another-procedure": "era para otro trámite",
    malformed: "no era una autorización válida",
    "signer-invalid": "no la firmó el registro de Enlace",
    "signature-invalid": "su firma no era válida",
  };
  const MAX_PAGES = 10;
  const PAGE_SIZE = 100;

  let token = null;
  let accessToken = null;

  // ---- RFC 9162 Merkle tree hashes ----

  async function sha256(parts) {
    let n = 0;
    for (const p of parts) n += p.length;
    const buf = new Uint8Array(n);
    let at = 0;
    for (const p of parts) { buf.set(p, at); at += p.length; }
    return new Uint8Array(await crypto.subtle.digest("SHA-256", buf));
  }
  const leafHash = (entry) => sha256([Uint8Array.of(0x00), entry]);
  const nodeHash = (l, r) => sha256([Uint8Array.of(0x01), l, r]);

  function hexHash(h) {
    if (typeof h !== "string" || !/^[0-9a-fA-F]{64}$/.test(h)) return null;
    const out = new Uint8Array(32);
    for (let i = 0; i < 32; i++) out[i] = parseInt(h.substr(2 * i, 2), 16);
    return out;
  }

  function sameBytes(a, b) {
    if (a.length !== b.length) return false;
    let d = 0;
    for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
    return d === 0;
  }

  // RFC 9162 §2.1.3.2: is `leaf` leaf `index` of the tree of `size` leaves with root `root`?
  async function verifyInclusion(index, size, leaf, path, root) {
    let fn = BigInt(index);
    let sn = BigInt(size) - 1n;
    if (fn > sn) return false;
    let r = leaf;
    for (const p of path) {
      if (sn === 0n) return false;
      if ((fn & 1n) === 1n || fn === sn) {
        r = await nodeHash(p, r);
        if ((fn & 1n) === 0n) {
          while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    return sn === 0n && sameBytes(r, root);
  }

  // The record's leaf entry is its canonical JSON (compact, fields in the order the API sends
  // them, which is the order the registry hashed); JSON.parse keeps that order.
  async function checkRecord(item, head) {
    const root = hexHash(head.root_hash_hex);
    const proof = item.proof;
    if (!root || !proof || proof.tree_size !== head.tree_size) return false;
    const path = (proof.inclusion_path || []).map(hexHash);
    if (path.some((p) => p === null)) return false;
    const leaf = await leafHash(utf8.encode(JSON.stringify(item.record)));
    return verifyInclusion(proof.leaf_index, proof.tree_size, leaf, path, root);
  }

  // ---- plain Spanish ----

  function fieldWords(fields) {
    const names = [];
    for (const f of fields || []) {
      const top = String(f).replace(/^\/+/, "").split("/")[0];
      const w = top.replace(/([A-Z])/g, " $1").replace(/[_-]/g, " ").toLowerCase().trim();
      const es = FIELD_WORDS[w] || w;
      if (es && !names.includes(es)) names.push(es);
    }
    if (names.length === 0) return "ningún dato";
    if (names.length === 1) return names[0];
    return names.slice(0, -1).join(", ") + " y " + names[names.length - 1];
  }

  function when(at) {
    const t = new Date(at);
    if (isNaN(t.getTime())) return at;
    const two = (n) => String(n).padStart(2, "0");
    return `el ${t.getUTCDate()} ${MONTHS[t.getUTCMonth()]} ${t.getUTCFullYear()} a las ` +
      `${two(t.getUTCHours())}:${two(t.getUTCMinutes())} UTC`;
  }

  function sentence(r, institution) {
    const refused = typeof r.result === "string" && r.result.startsWith("refused:");
    if (!refused) {
      return `El ${institution} consultó su ${fieldWords(r.fields)} ${when(r.at)} para ` +
        `${r.purpose}, bajo el contrato ${r.contract}.`;
    }
    return `El ${institution} pidió sus datos ${when(r.at)} para ${r.purpose}, bajo el ` +
      `contrato ${r.contract}; fue rechazado (${r.result.slice(8)}) y no se entregó ningún dato.`;
  }

  // ---- the page ----

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function status(text) { $("status").textContent = text; }

  async function renderRecord(item, head, subject) {
    const r = item.record.record;
    const li = el("li", { class: "record", "data-message-id": r.message_id });
    li.append(el("p", { class: "sentence" }, sentence(r, item.institution)));
    if (item.sentence) li.append(el("p", { class: "sentence-en", lang: "en" }, item.sentence));
    const dl = el("dl");
    const row = (k, v) => { dl.append(el("dt", {}, k), el("dd", {}, v)); };
    row("Institución", `${item.institution} (${r.consumer_member})`);
    row("Datos", (r.fields || []).length ? r.fields.join(", ") : "ninguno");
    row("Finalidad", r.purpose);
    row("Base legal", r.legal_basis);
    row("Contrato", r.contract);
    row("Fecha", `${r.at} (UTC)`);
    row("Resultado", r.result);
    row("Servicio", `${r.provider_service} ${r.operation}`);
    li.append(dl);
    if (r.authorisation) {
      li.append(el("p", { class: "authorisation-note" },
        `Con su autorización ${r.authorisation}, que permitió entregar datos sensibles.`));
    }
    if (r.authorisation_refused) {
      const why = REFUSALS[String(r.authorisation_refused).split(":")[0]] || r.authorisation_refused;
      li.append(el("p", { class: "authorisation-note" },
        `Se presentó una autorización que no fue aceptada (${why}): no se entregaron datos sensibles.`));
    }
    if (item.hidden_until) {
      li.append(el("p", { class: "hidden-note" },
        `Este registro le estuvo reservado desde ${when(item.hidden_from)} hasta ` +
        `${when(item.hidden_until)}, a pedido de ${item.hidden_authority}. ` +
        `Motivo: ${item.hidden_reason}`));
    }
    let ok = false;
    try { ok = r.subject === subject && await checkRecord(item, head); } catch (e) { ok = false; }
    li.append(el("p", { class: "mark", "data-verified": ok ? "yes" : "no" }, ok
      ? "✓ Verificado en su navegador: el registro está en el árbol firmado."
      : "✗ Prueba inválida: este registro no se pudo verificar contra el árbol firmado."));
    return li;
  }

  // The headers that say who is signed in: the ID token, and (ClaveÚnica) the access token
  // the registry reads the RUN with.
  function auth(extra) {
    const h = Object.assign({ Authorization: `Bearer ${token}` }, extra || {});
    if (accessToken) h["Enlace-Access-Token"] = accessToken;
    return h;
  }

  async function api(path, init) {
    const resp = await fetch(path, Object.assign({ credentials: "omit", cache: "no-store" }, init));
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.detail || `${resp.status}`);
    return body;
  }

  async function showRecords() {
    status("Cargando sus registros…");
    const list = $("records");
    list.replaceChildren();
    let shown = 0;
    let total = 0;
    let subject = "";
    let head = null;
    for (let page = 1; page <= MAX_PAGES; page++) {
      const body = await api(`/v1/citizen/access-records?page=${page}&page_size=${PAGE_SIZE}`,
        { headers: auth() });
      subject = body.subject;
      total = body.total;
      head = body.tree_head.tree_head;
      for (const item of body.records) {
        list.append(await renderRecord(item, head, subject));
        shown++;
      }
      if (body.records.length < PAGE_SIZE || shown >= total) break;
    }
    $("who").textContent = subject;
    $("signin").hidden = true;
    $("records-section").hidden = false;
    $("empty").hidden = total !== 0;
    $("summary").textContent = total === 0 ? "" : (shown < total
      ? `${total} registros; se muestran los ${shown} más antiguos.`
      : `${total} ${total === 1 ? "registro" : "registros"}.`);
    if (head) {
      $("tree-head").textContent = `Árbol firmado por ${head.signer} el ${head.timestamp}: ` +
        `${head.tree_size} registros, raíz ${head.root_hash_hex}.`;
    }
    status("");
    document.body.dataset.state = "done";
  }

  // ---- authorisations ----

  function renderAuthorisation(a, withActions) {
    const li = el("li", { class: "authorisation", "data-id": a.id, "data-state": a.state });
    const fields = fieldWords(a.sensitive_fields);
    li.append(el("p", { class: "sentence" },
      `El ${a.institution} pide su autorización para recibir su ${fields} para ` +
      `${a.purpose}, en el trámite ${a.procedure}, bajo el contrato ${a.contract}.`));
    const dl = el("dl");
    const row = (k, v) => { dl.append(el("dt", {}, k), el("dd", {}, v)); };
    row("Motivo que da", a.reason);
    row("Base legal", a.legal_basis);
    row("Estado", (STATES[a.state] || a.state) + (a.expired ? " (vencida)" : ""));
    if (a.expires_at) row("Vence", when(a.expires_at));
    li.append(dl);
    const events = el("ul", { class: "events" });
    for (const e of a.events || []) {
      events.append(el("li", { "data-event": e.event }, `${EVENTS[e.event] || e.event} ${when(e.at)}`));
    }
    li.append(events);
    const actions = el("p", { class: "actions" });
    if (withActions && a.state === "pending") {
      actions.append(el("button", { type: "button", class: "grant", "data-action": "grant" }, "Autorizar"));
      actions.append(el("button", { type: "button", class: "refuse", "data-action": "refuse" }, "Rechazar"));
    }
    if (withActions && a.state === "granted" && !a.expired) {
      actions.append(el("button", { type: "button", class: "revoke", "data-action": "revoke" }, "Revocar"));
    }
    if (actions.childNodes.length) li.append(actions);
    return li;
  }

  async function showAuthorisations() {
    const body = await api("/v1/citizen/authorisations", { headers: auth() });
    const pending = $("pending");
    const history = $("history");
    pending.replaceChildren();
    history.replaceChildren();
    for (const a of body.pending || []) pending.append(renderAuthorisation(a, true));
    for (const a of body.authorisations || []) {
      if (a.state !== "pending") history.append(renderAuthorisation(a, true));
    }
    $("no-pending").hidden = pending.childNodes.length !== 0;
    $("no-history").hidden = history.childNodes.length !== 0;
    $("authorisations-section").hidden = false;
  }

  async function act(id, action) {
    document.body.dataset.state = "acting";
    status(action === "grant" ? "Registrando su autorización…"
      : action === "refuse" ? "Registrando su rechazo…" : "Revocando su autorización…");
    await api(`/v1/citizen/authorisations/${encodeURIComponent(id)}/${action}`,
      { method: "POST", headers: auth() });
    await refresh();
  }

  function onAction(ev) {
    const button = ev.target.closest("button[data-action]");
    if (!button) return;
    const li = button.closest("li.authorisation");
    if (!li) return;
    button.disabled = true;
    act(li.dataset.id, button.dataset.action).catch(fail);
  }

  async function refresh() {
    await showAuthorisations();
    await showRecords();
  }

  function normaliseRun(run) {
    return String(run).replace(/\./g, "").trim().toUpperCase();
  }

  // DEVELOPMENT ONLY: the registry's development issuer gives an ID token for any RUN. In
  // production this is where the page would redirect to ClaveÚnica (OpenID Connect
  // authorization code flow) and read the ID token on the way back.
  async function devSignIn(run) {
    const body = await api("/oidc/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sub: `CL-RUN:${normaliseRun(run)}` }),
    });
    token = body.id_token;
    accessToken = body.access_token || null;
  }

  async function devIssuerOn() {
    try {
      const d = await api("/.well-known/openid-configuration");
      return typeof d.token_endpoint === "string" && d.token_endpoint.endsWith("/oidc/dev/token");
    } catch (e) {
      return false;
    }
  }

  function fail(e) {
    status(`No se pudo completar: ${e.message}`);
    document.body.dataset.state = "error";
  }

  async function start() {
    const dev = await devIssuerOn();
    $("dev-form").hidden = !dev;
    $("no-dev").hidden = dev;
    $("dev-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      devSignIn($("run").value).then(refresh).catch(fail);
    });
    $("pending").addEventListener("click", onAction);
    $("history").addEventListener("click", onAction);
    $("signout").addEventListener("click", () => {
      token = null;
      accessToken = null;
      $("records").replaceChildren();
      $("pending").replaceChildren();
      $("history").replaceChildren();
      $("records-section").hidden = true;
      $("authorisations-section").hidden = true;
      $("signin").hidden = false;
      document.body.dataset.state = "signed-out";
    });
    // Development only: `?dev_run=12345678-5` signs in at once through the development issuer
    // (for tests driving a headless browser); ignored when the development issuer is off.
    const params = new URLSearchParams(location.search);
    const devRun = params.get("dev_run");
    if (devRun) {
      history.replaceState(null, "", location.pathname);
      if (!dev) {
        status("El ingreso de desarrollo no está activo en este registro.");
        document.body.dataset.state = "error";
        return;
      }
      await devSignIn(devRun);
      await refresh();
      return;
    }
    document.body.dataset.state = "signed-out";
  }

  document.addEventListener("DOMContentLoaded", () => { start().catch(fail); });
})();
