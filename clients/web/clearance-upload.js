/**
 * clearance-upload.js — a dependency-free browser uploader for a Clearance gateway.
 *
 *   import { ClearanceUploader } from "/static/clearance-upload.js";
 *   const uploader = new ClearanceUploader({ gateway: "https://uploads.example", token });
 *   const record = await uploader.upload(file, {
 *     onProgress: ({ loaded, total }) => …,   // bytes; never goes backwards
 *     onStage: (status, entry) => …,          // pending … uploaded, scanning, processing, ready
 *     signal,                                  // AbortSignal: pause (resumable) or cancel
 *   });
 *   record.status  // "ready", "infected", "rejected", … (GET /v1/uploads/{id})
 *
 * The bytes go straight to storage with the presigned request(s) the gateway
 * returns: one PUT for small files, S3 multipart (parts in parallel, each retried
 * with back-off, re-signed when storage says 403) when the gateway answers with a
 * `multipart` plan. A multipart upload is remembered in localStorage (upload id +
 * a fingerprint of the file) so adding the same file again after a reload sends
 * only the parts storage does not hold yet.
 *
 * A policy refusal (type, size, name) rejects with a `ClearanceError` carrying the
 * problem+json (`.problem`, `.status`) before any byte is sent.
 *
 * Each upload keeps one connection to the gateway open for its status stream once
 * its bytes have landed; browsers allow six per origin over HTTP/1.1, so run a few
 * uploads at a time (the demo page runs three).
 */

export const FINAL_STATES = new Set(["ready", "infected", "rejected", "failed", "expired", "aborted"]);

const MiB = 1024 * 1024;
// S3's smallest part: a file this size or smaller is never uploaded in parts.
const MIN_PART = 5 * MiB;
const RESUME_PREFIX = "clearance-upload:v1:";
// Storage aborts abandoned multipart uploads after a day (the gateway's reconciler).
const RESUME_MAX_AGE_MS = 24 * 3600 * 1000;
// A transfer without any progress for this long is dropped and retried.
const STALL_MS = 60_000;
// A status stream without a byte (the gateway sends heartbeats) for this long is reconnected.
const STREAM_IDLE_MS = 45_000;
// Signed URLs this close to expiry are signed again before use.
const URL_SAFETY_MS = 60_000;
// Headers a browser sets itself and refuses from scripts.
const BROWSER_HEADERS = new Set(["content-length", "host", "connection"]);

/** An upload that can't go on: `.status` and `.problem` (problem+json) when the gateway said why. */
export class ClearanceError extends Error {
  constructor(message, { status = 0, problem = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "ClearanceError";
    this.status = status;
    this.problem = problem;
  }
}

/** A readable sentence from an RFC 9457 problem: its detail, then each field error. */
export function describeProblem(problem) {
  if (!problem || typeof problem !== "object") return "the request failed";
  const detail = problem.detail || problem.title || `HTTP ${problem.status}`;
  const fields = Array.isArray(problem.errors)
    ? problem.errors.map((e) => `${e.field} ${e.message}`)
    : [];
  return fields.length ? `${detail}: ${fields.join("; ")}` : detail;
}

/** Exponential back-off with jitter: half fixed, half random, capped. */
export function backoffDelay(attempt, { base = 500, cap = 20_000 } = {}) {
  const ceiling = Math.min(cap, base * 2 ** attempt);
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function throwIfAborted(signal) {
  if (signal?.aborted) throw signal.reason;
}

/** A network-level failure of one transfer attempt (retried). */
class TransferError extends Error {
  constructor(message) {
    super(message);
    this.name = "TransferError";
  }
}

function s3ErrorCode(body) {
  const match = /<Code>([^<]{1,100})<\/Code>/.exec(body || "");
  return match ? match[1] : "";
}

function retryableStatus(status) {
  return status === 408 || status === 429 || status >= 500;
}

/**
 * PUT a body with XMLHttpRequest (fetch has no upload progress), with exactly the
 * signed headers except those the browser sets itself. Resolves with the status,
 * the ETag (storage must expose it through CORS) and the body text.
 */
function sendBytes(url, headers, body, { signal, onProgress, stallMs = STALL_MS }) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const xhr = new XMLHttpRequest();
    let stallTimer = 0;
    const cleanup = () => {
      clearTimeout(stallTimer);
      signal?.removeEventListener("abort", onAbort);
    };
    const armStall = () => {
      clearTimeout(stallTimer);
      stallTimer = setTimeout(() => {
        cleanup();
        xhr.abort();
        reject(new TransferError(`no progress for ${Math.round(stallMs / 1000)} s`));
      }, stallMs);
    };
    const onAbort = () => {
      cleanup();
      xhr.abort();
      reject(signal.reason);
    };
    xhr.open("PUT", url);
    for (const [name, value] of Object.entries(headers || {})) {
      if (!BROWSER_HEADERS.has(name.toLowerCase())) xhr.setRequestHeader(name, value);
    }
    xhr.upload.onprogress = (event) => {
      armStall();
      onProgress?.(event.loaded);
    };
    xhr.upload.onload = armStall; // all sent: now waiting for storage's answer
    xhr.onload = () => {
      cleanup();
      resolve({ status: xhr.status, etag: xhr.getResponseHeader("ETag"), text: xhr.responseText });
    };
    xhr.onerror = () => {
      cleanup();
      reject(new TransferError("the connection to storage failed"));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    armStall();
    xhr.send(body);
  });
}

/**
 * Counts a file's bytes: confirmed parts plus the in-flight progress of current
 * attempts. A failed attempt loses its in-flight bytes, so what is reported is the
 * high-water mark: the bar pauses while a retry catches up, it never jumps back.
 */
class ByteCounter {
  constructor(total, listener) {
    this.total = total;
    this.listener = listener;
    this.confirmed = 0;
    this.inFlight = new Map();
    this.shown = -1;
  }

  progress(key, bytes) {
    this.inFlight.set(key, bytes);
    this.emit();
  }

  drop(key) {
    this.inFlight.delete(key);
  }

  confirm(key, bytes) {
    this.inFlight.delete(key);
    this.confirmed += bytes;
    this.emit();
  }

  /** Bytes storage already holds (a resumed upload): one step, not one per part. */
  credit(bytes) {
    this.confirmed += bytes;
  }

  emit() {
    let now = this.confirmed;
    for (const bytes of this.inFlight.values()) now += bytes;
    now = Math.min(now, this.total);
    if (now > this.shown) {
      this.shown = now;
      this.listener?.({ loaded: now, total: this.total });
    }
  }
}

/**
 * Parse a `text/event-stream` body (a ReadableStream of bytes) into events
 * `{type, data, id, retry}`; `onChunk` is called for every chunk (heartbeats too).
 */
export async function* readEventStream(body, { onChunk } = {}) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let type = "";
  let lastId = "";
  let retry = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return; // an unterminated last event is dropped, as the spec says
      onChunk?.();
      buffer += value;
      const ready = [];
      let start = 0;
      for (let i = 0; i < buffer.length; i++) {
        const c = buffer[i];
        if (c !== "\n" && c !== "\r") continue;
        if (c === "\r" && i === buffer.length - 1) break; // maybe the first half of \r\n
        const line = buffer.slice(start, i);
        if (c === "\r" && buffer[i + 1] === "\n") i++;
        start = i + 1;
        if (line === "") {
          if (data.length) ready.push({ type: type || "message", data: data.join("\n"), id: lastId, retry });
          data = [];
          type = "";
          continue;
        }
        if (line[0] === ":") continue; // a comment (heartbeat)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val[0] === " ") val = val.slice(1);
        if (field === "data") data.push(val);
        else if (field === "event") type = val;
        else if (field === "id" && !val.includes("\0")) lastId = val;
        else if (field === "retry" && /^\d+$/.test(val)) retry = Number(val);
      }
      buffer = buffer.slice(start);
      yield* ready;
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The JWT's subject, so two people sharing a browser never resume each other's uploads. */
function tokenSubject(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return String(JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "="))).sub ?? "");
  } catch {
    return "";
  }
}

/**
 * Identify "the same file" across reloads: name, size, lastModified and the
 * SHA-256 of its first and last MiB (the middle is not read: cheap for any size).
 */
export async function fileFingerprint(file) {
  const parts = [file.name, file.size, file.lastModified];
  if (globalThis.crypto?.subtle) {
    const head = await file.slice(0, MiB).arrayBuffer();
    const tail = await file.slice(Math.max(0, file.size - MiB)).arrayBuffer();
    parts.push(hex(await crypto.subtle.digest("SHA-256", head)));
    parts.push(hex(await crypto.subtle.digest("SHA-256", tail)));
  }
  return parts;
}

/** Signs part URLs in batches (ahead of need) and signs again when one expires. */
class PartSigner {
  constructor(api, uploadId, batchSize, upcoming) {
    this.api = api;
    this.uploadId = uploadId;
    this.batchSize = batchSize;
    this.upcoming = upcoming; // the numbers still queued, to sign ahead
    this.urls = new Map();
    this.pending = new Map();
  }

  fresh(n) {
    const signed = this.urls.get(n);
    return signed !== undefined && signed.expiresAt - URL_SAFETY_MS > Date.now();
  }

  async get(n, signal) {
    for (let round = 0; round < 3; round++) {
      if (this.fresh(n)) return this.urls.get(n);
      if (this.pending.has(n)) {
        await this.pending.get(n);
        continue;
      }
      const batch = [n];
      for (const m of this.upcoming()) {
        if (batch.length >= this.batchSize) break;
        if (m !== n && !this.pending.has(m) && !this.fresh(m)) batch.push(m);
      }
      const request = this.api("POST", `/v1/uploads/${this.uploadId}/parts`, {
        body: { part_numbers: batch },
        signal,
        retries: 3,
      }).then((answer) => {
        const expiresAt = Date.parse(answer.expires_at);
        for (const part of answer.parts) {
          this.urls.set(part.part_number, { url: part.url, headers: part.headers, expiresAt });
        }
      });
      for (const m of batch) this.pending.set(m, request);
      try {
        await request;
      } finally {
        for (const m of batch) this.pending.delete(m);
      }
    }
    if (this.urls.has(n)) return this.urls.get(n);
    throw new ClearanceError(`the gateway did not sign part ${n}`);
  }

  invalidate(n) {
    this.urls.delete(n);
  }
}

export class ClearanceUploader {
  /**
   * @param {object} options
   * @param {string} options.gateway  the gateway's base URL, e.g. location.origin
   * @param {string|function(): (string|Promise<string>)} options.token  bearer token (or a getter)
   * @param {number} [options.parallel=4]  parts in flight per file (multipart)
   * @param {string} [options.profile]  upload profile; the gateway's default if absent
   * @param {number} [options.retries=8]  attempts per part / request before giving up
   * @param {Storage} [options.storage=localStorage]  where resumable uploads are remembered
   */
  constructor({ gateway, token, parallel = 4, profile, retries = 8, storage } = {}) {
    if (!gateway) throw new TypeError("ClearanceUploader needs the gateway's URL");
    this.gateway = String(gateway).replace(/\/+$/, "");
    this.token = token;
    this.parallel = Math.max(1, Math.min(16, Math.floor(parallel)));
    this.profile = profile;
    this.retries = Math.max(1, retries);
    this.storage = storage;
  }

  /**
   * Upload one File/Blob through the whole pipeline.
   * Resolves with the final record; rejects with a ClearanceError (or the signal's reason).
   */
  async upload(file, { onProgress, onStage, onCreated, onResume, signal, profile } = {}) {
    const chosenProfile = profile ?? this.profile;
    const counter = new ByteCounter(file.size, onProgress);
    const resumeKey = file.size > MIN_PART ? await this.#resumeKey(file) : null;
    throwIfAborted(signal);

    let created = null;
    let stored = new Map();
    const resumable = resumeKey ? await this.#resumable(resumeKey, signal) : null;
    if (resumable) {
      ({ created, stored } = resumable);
      onResume?.({ id: created.id, parts: stored.size, partCount: created.multipart.part_count });
    } else {
      created = await this.#create(file, chosenProfile, signal);
    }
    onCreated?.({ id: created.id, multipart: created.multipart ?? null, resumed: Boolean(resumable) });

    if (created.multipart) {
      if (resumeKey && !resumable) this.#remember(resumeKey, file, created);
      await this.#sendParts(file, created, stored, counter, signal, resumeKey);
    } else {
      created = await this.#sendWhole(file, created, chosenProfile, counter, signal);
    }
    await this.#follow(created.id, onStage, signal);
    return this.#api("GET", `/v1/uploads/${created.id}`, { signal, retries: 3 });
  }

  /** Delete an upload (aborts one in progress) and forget it locally. */
  async cancel(uploadId) {
    this.#forgetId(uploadId);
    await this.#api("DELETE", `/v1/uploads/${uploadId}`, { retries: 2 });
  }

  /** Unfinished multipart uploads remembered in this browser: [{id, name, size, savedAt}]. */
  remembered() {
    const store = this.#store();
    if (!store) return [];
    const found = [];
    for (let i = 0; i < store.length; i++) {
      const key = store.key(i);
      if (!key?.startsWith(RESUME_PREFIX)) continue;
      try {
        const entry = JSON.parse(store.getItem(key));
        if (entry.gateway !== this.gateway) continue;
        if (Date.now() - entry.savedAt > RESUME_MAX_AGE_MS) continue;
        found.push({ id: entry.id, name: entry.name, size: entry.size, savedAt: entry.savedAt });
      } catch {
        // not one of ours after all
      }
    }
    return found;
  }

  // ---- the gateway ---------------------------------------------------------------

  async #headers(extra) {
    const token = typeof this.token === "function" ? await this.token() : this.token;
    const headers = { Accept: "application/json", ...extra };
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  async #api(method, path, { body, signal, retries = 0 } = {}) {
    for (let attempt = 0; ; attempt++) {
      const headers = await this.#headers(body === undefined ? {} : { "Content-Type": "application/json" });
      let response;
      try {
        response = await fetch(this.gateway + path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal,
          cache: "no-store",
        });
      } catch (err) {
        throwIfAborted(signal);
        if (attempt < retries) {
          await sleep(backoffDelay(attempt), signal);
          continue;
        }
        throw new ClearanceError(`the gateway could not be reached (${err.message})`, { cause: err });
      }
      if (response.ok) return response.status === 204 ? null : response.json();
      const problem = await readProblem(response);
      if (retryableStatus(response.status) && attempt < retries) {
        await sleep(backoffDelay(attempt), signal);
        continue;
      }
      throw new ClearanceError(describeProblem(problem), { status: response.status, problem });
    }
  }

  #create(file, profile, signal) {
    const body = { filename: file.name || "upload", content_type: file.type || "application/octet-stream", size: file.size };
    if (profile) body.profile = profile;
    return this.#api("POST", "/v1/uploads", { body, signal, retries: 2 });
  }

  async #complete(uploadId, body, signal) {
    // "Not in storage yet" (409 without a state) can be storage catching up: ask again.
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#api("POST", `/v1/uploads/${uploadId}/complete`, { body, signal, retries: 3 });
      } catch (err) {
        const landing = err instanceof ClearanceError && err.status === 409 && !err.problem?.upload_status;
        if (!landing || attempt >= 3) throw err;
        await sleep(backoffDelay(attempt), signal);
      }
    }
  }

  // ---- bytes ---------------------------------------------------------------------

  async #sendWhole(file, created, profile, counter, signal) {
    counter.emit();
    let renewed = false;
    let lastProblem = "";
    for (let attempt = 0; ; attempt++) {
      let answer = null;
      try {
        answer = await sendBytes(created.upload.url, created.upload.headers, file, {
          signal,
          onProgress: (bytes) => counter.progress("whole", bytes),
        });
      } catch (err) {
        counter.drop("whole");
        throwIfAborted(signal);
        lastProblem = err.message;
      }
      if (answer) {
        counter.drop("whole");
        if (answer.status >= 200 && answer.status < 300) {
          counter.confirm("whole", file.size);
          break;
        }
        const code = s3ErrorCode(answer.text);
        lastProblem = `HTTP ${answer.status}${code ? ` ${code}` : ""}`;
        if (answer.status === 403 && !renewed && Date.parse(created.expires_at) - URL_SAFETY_MS <= Date.now()) {
          // The signed URL expired (a long pause): start over with a fresh upload.
          renewed = true;
          await this.#api("DELETE", `/v1/uploads/${created.id}`, { signal }).catch(() => {});
          created = await this.#create(file, profile, signal);
          continue;
        }
        if (!retryableStatus(answer.status)) {
          throw new ClearanceError(`storage refused the file: ${lastProblem}`, { status: answer.status });
        }
      }
      if (attempt + 1 >= this.retries) {
        throw new ClearanceError(`the upload failed after ${attempt + 1} attempts (${lastProblem})`);
      }
      await sleep(backoffDelay(attempt), signal);
    }
    await this.#complete(created.id, {}, signal);
    return created;
  }

  async #sendParts(file, created, stored, counter, signal, resumeKey) {
    const { part_size: partSize, part_count: count } = created.multipart;
    const length = (n) => (n < count ? partSize : file.size - partSize * (count - 1));
    const etags = new Map(stored);
    for (const n of etags.keys()) counter.credit(length(n));
    counter.emit();
    const queue = [];
    for (let n = 1; n <= count; n++) if (!etags.has(n)) queue.push(n);

    // One failing part stops its siblings; the caller's signal stops everything.
    const inner = new AbortController();
    const stop = () => inner.abort(signal.reason);
    signal?.addEventListener("abort", stop, { once: true });
    const signer = new PartSigner(
      (method, path, options) => this.#api(method, path, options),
      created.id,
      Math.min(100, Math.max(8, this.parallel * 4)),
      () => queue,
    );
    let failure = null;
    const worker = async () => {
      while (queue.length && !failure) {
        const n = queue.shift();
        try {
          etags.set(n, await this.#sendPart(file, n, (n - 1) * partSize, length(n), signer, counter, inner.signal));
        } catch (err) {
          if (!failure) {
            failure = err;
            inner.abort(err);
          }
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(this.parallel, queue.length) }, worker));
    } finally {
      signal?.removeEventListener("abort", stop);
    }
    throwIfAborted(signal);
    if (failure) {
      if (failure instanceof ClearanceError && (failure.status === 404 || failure.status === 409)) {
        this.#forget(resumeKey); // the upload is gone or finished: nothing to resume
      }
      throw failure;
    }
    const parts = [...etags].sort((a, b) => a[0] - b[0]).map(([n, etag]) => ({ part_number: n, etag }));
    try {
      await this.#complete(created.id, { parts }, signal);
    } catch (err) {
      if (err instanceof ClearanceError && err.status >= 400 && err.status < 500) this.#forget(resumeKey);
      throw err;
    }
    this.#forget(resumeKey);
  }

  async #sendPart(file, n, offset, size, signer, counter, signal) {
    const blob = file.slice(offset, offset + size);
    const key = `part-${n}`;
    let resigned = false;
    let lastProblem = "";
    for (let attempt = 0; ; attempt++) {
      const signed = await signer.get(n, signal);
      let answer = null;
      try {
        answer = await sendBytes(signed.url, signed.headers, blob, {
          signal,
          onProgress: (bytes) => counter.progress(key, bytes),
        });
      } catch (err) {
        counter.drop(key);
        throwIfAborted(signal);
        lastProblem = err.message;
      }
      if (answer) {
        counter.drop(key);
        if (answer.status >= 200 && answer.status < 300) {
          if (!answer.etag) {
            throw new ClearanceError("storage did not expose the ETag header (its CORS rules must expose ETag)");
          }
          counter.confirm(key, size);
          return answer.etag;
        }
        const code = s3ErrorCode(answer.text);
        lastProblem = `HTTP ${answer.status}${code ? ` ${code}` : ""}`;
        if (answer.status === 403) {
          signer.invalidate(n); // expired or refused: the next attempt signs again
          if (!resigned) {
            resigned = true;
            continue;
          }
        } else if (!retryableStatus(answer.status)) {
          throw new ClearanceError(`storage refused part ${n}: ${lastProblem}`, { status: answer.status });
        }
      }
      if (attempt + 1 >= this.retries) {
        throw new ClearanceError(`part ${n} failed after ${attempt + 1} attempts (${lastProblem})`);
      }
      await sleep(backoffDelay(attempt), signal);
    }
  }

  // ---- status --------------------------------------------------------------------

  /**
   * Follow `GET /v1/uploads/{id}/events` until a final state. EventSource can't send
   * an Authorization header, so this reads the stream with fetch; a dropped stream
   * reconnects with Last-Event-ID and the gateway replays only what came after.
   */
  async #follow(uploadId, onStage, signal) {
    let lastId = "";
    let retryMs = 2000;
    let failures = 0;
    for (;;) {
      throwIfAborted(signal);
      const connection = new AbortController();
      const stop = () => connection.abort(signal.reason);
      signal?.addEventListener("abort", stop, { once: true });
      let idle = 0;
      const touch = () => {
        clearTimeout(idle);
        idle = setTimeout(() => connection.abort(new TransferError("the status stream went silent")), STREAM_IDLE_MS);
      };
      let events = 0;
      try {
        touch();
        const headers = await this.#headers({ Accept: "text/event-stream" });
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await fetch(`${this.gateway}/v1/uploads/${uploadId}/events`, {
          headers,
          signal: connection.signal,
          cache: "no-store",
        });
        if (!response.ok) {
          const problem = await readProblem(response);
          if (!retryableStatus(response.status)) {
            throw new ClearanceError(describeProblem(problem), { status: response.status, problem });
          }
        } else {
          for await (const event of readEventStream(response.body, { onChunk: touch })) {
            if (event.retry) retryMs = event.retry;
            if (event.id) lastId = event.id;
            if (event.type !== "status") continue;
            events++;
            failures = 0;
            const entry = JSON.parse(event.data);
            onStage?.(entry.status, entry);
            if (FINAL_STATES.has(entry.status)) return entry.status;
          }
        }
      } catch (err) {
        throwIfAborted(signal);
        if (err instanceof ClearanceError) throw err;
        // a dropped or silent stream: reconnect below
      } finally {
        clearTimeout(idle);
        signal?.removeEventListener("abort", stop);
      }
      if (events === 0 && lastId) {
        // Resumed after everything was sent: the upload may already be final.
        const record = await this.#api("GET", `/v1/uploads/${uploadId}`, { signal, retries: 2 });
        if (FINAL_STATES.has(record.status)) {
          onStage?.(record.status, { status: record.status, detail: {}, reason: record.reason });
          return record.status;
        }
      }
      failures++;
      if (failures > this.retries) {
        throw new ClearanceError("lost the status stream; the upload goes on, check its status later");
      }
      await sleep(Math.max(retryMs, backoffDelay(failures - 1)), signal);
    }
  }

  // ---- resume after reload --------------------------------------------------------

  #store() {
    try {
      const store = this.storage ?? globalThis.localStorage;
      if (!store) return null;
      void store.length; // throws where storage is disabled
      return store;
    } catch {
      return null;
    }
  }

  async #resumeKey(file) {
    if (!this.#store()) return null;
    const token = typeof this.token === "function" ? await this.token() : this.token;
    const material = JSON.stringify([this.gateway, tokenSubject(token || ""), ...(await fileFingerprint(file))]);
    if (!globalThis.crypto?.subtle) return RESUME_PREFIX + material;
    return RESUME_PREFIX + hex(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(material)));
  }

  #remember(key, file, created) {
    const entry = {
      id: created.id,
      gateway: this.gateway,
      name: file.name,
      size: file.size,
      partSize: created.multipart.part_size,
      partCount: created.multipart.part_count,
      expiresAt: created.expires_at,
      savedAt: Date.now(),
    };
    try {
      this.#store()?.setItem(key, JSON.stringify(entry));
    } catch {
      // storage full or disabled: this upload just won't survive a reload
    }
  }

  #forget(key) {
    if (!key) return;
    try {
      this.#store()?.removeItem(key);
    } catch {
      // storage disabled: nothing was remembered
    }
  }

  #forgetId(uploadId) {
    const store = this.#store();
    if (!store) return;
    for (let i = store.length - 1; i >= 0; i--) {
      const key = store.key(i);
      if (!key?.startsWith(RESUME_PREFIX)) continue;
      try {
        if (JSON.parse(store.getItem(key)).id === uploadId) store.removeItem(key);
      } catch {
        // not one of ours
      }
    }
  }

  /** The remembered upload for this file, with the parts storage already holds. */
  async #resumable(key, signal) {
    let entry;
    try {
      entry = JSON.parse(this.#store()?.getItem(key) ?? "null");
    } catch {
      entry = null;
    }
    if (!entry) return null;
    if (Date.now() - entry.savedAt > RESUME_MAX_AGE_MS) {
      this.#forget(key);
      return null;
    }
    let listing;
    try {
      listing = await this.#api("GET", `/v1/uploads/${entry.id}/parts`, { signal, retries: 2 });
    } catch (err) {
      if (err instanceof ClearanceError && (err.status === 404 || err.status === 409)) {
        this.#forget(key); // finished, aborted, expired or someone else's: start afresh
        return null;
      }
      throw err;
    }
    const { partSize, partCount, size } = entry;
    const expected = (n) => (n < partCount ? partSize : size - partSize * (partCount - 1));
    const stored = new Map();
    for (const part of listing.parts) {
      if (part.part_number >= 1 && part.part_number <= partCount && part.size === expected(part.part_number)) {
        stored.set(part.part_number, part.etag);
      }
    }
    return {
      created: { id: entry.id, expires_at: entry.expiresAt, multipart: { part_size: partSize, part_count: partCount } },
      stored,
    };
  }
}

async function readProblem(response) {
  const text = await response.text().catch(() => "");
  try {
    const problem = JSON.parse(text);
    if (problem && typeof problem === "object") return { status: response.status, ...problem };
  } catch {
    // not JSON: describe what we got
  }
  return { status: response.status, title: response.statusText, detail: text.slice(0, 200) || `HTTP ${response.status}` };
}
