// The demo page: drag-and-drop many files, watch each one through every stage.
import { ClearanceError, ClearanceUploader } from "./clearance-upload.js";

const MAX_ACTIVE = 3; // uploads at once; each holds one status stream to the gateway
const TOKEN_KEY = "clearance.demo.token";
const STAGES = ["uploaded", "scanning", "processing", "ready"];
const BAD_STAGE = { infected: "scanning", rejected: "processing" };
const PHASE_LABELS = {
  queued: "Queued",
  preparing: "Preparing",
  uploading: "Uploading",
  paused: "Paused",
  pipeline: "Checking",
  ready: "Ready",
  refused: "Refused",
  infected: "Infected",
  rejected: "Rejected",
  failed: "Failed",
  expired: "Expired",
  aborted: "Aborted",
  error: "Error",
  cancelled: "Cancelled",
};

const $ = (selector, root = document) => root.querySelector(selector);
const config = document.body.dataset;
const profiles = parseJson(config.profiles, {});
const defaultProfile = config.defaultProfile || "";

const tokenInput = $("#token");
const tokenStatus = $("#token-status");
const profileSelect = $("#profile");
const picker = $("#picker");
const dropzone = $("#dropzone");
const list = $("#files");
const announcer = $("#announcer");

function parseJson(text, fallback) {
  try {
    return JSON.parse(text);
  } catch {
    return fallback;
  }
}

function currentToken() {
  return tokenInput.value.trim().replace(/^Bearer\s+/i, "");
}

const uploader = new ClearanceUploader({ gateway: location.origin, token: currentToken, parallel: 4 });

// ---- formatting --------------------------------------------------------------------

function formatBytes(n) {
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let value = n;
  let unit = -1;
  do {
    value /= 1000;
    unit++;
  } while (value >= 1000 && unit < units.length - 1);
  return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
}

function formatDuration(seconds) {
  const s = Math.max(1, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
  return m % 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : `${Math.floor(m / 60)} h`;
}

let announceTimer = 0;
function announce(message) {
  // Clear first so the same words twice are still read out.
  clearTimeout(announceTimer);
  announcer.textContent = "";
  announceTimer = setTimeout(() => {
    announcer.textContent = message;
  }, 50);
}

// ---- token -------------------------------------------------------------------------

tokenInput.value = sessionStorage.getItem(TOKEN_KEY) ?? "";
tokenInput.addEventListener("input", () => {
  sessionStorage.setItem(TOKEN_KEY, currentToken());
  tokenStatus.textContent = "";
});

if (config.devToken === "on") {
  const button = $("#dev-token");
  button.hidden = false;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const response = await fetch("/dev/token", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: "{}",
      });
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.detail || `HTTP ${response.status}`);
      tokenInput.value = answer.token;
      sessionStorage.setItem(TOKEN_KEY, answer.token);
      tokenStatus.textContent = `Development token for ${answer.subject}, valid ${formatDuration(answer.expires_in)}.`;
    } catch (err) {
      tokenStatus.textContent = `No token: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });
}

// ---- profiles ----------------------------------------------------------------------

for (const name of Object.keys(profiles)) {
  const option = document.createElement("option");
  option.value = name;
  option.textContent = name === defaultProfile ? `${name} (default)` : name;
  profileSelect.append(option);
}

/** The chosen profile, or the default one if it takes this type, else the first that does. */
function pickProfile(file) {
  if (profileSelect.value) return profileSelect.value;
  if (profiles[defaultProfile]?.includes(file.type)) return defaultProfile;
  for (const [name, types] of Object.entries(profiles)) {
    if (types.includes(file.type)) return name;
  }
  return defaultProfile || undefined; // the gateway says precisely why it refuses
}

// ---- the queue ---------------------------------------------------------------------

const waiting = [];
let active = 0;

function enqueue(job) {
  waiting.push(job);
  pump();
}

function pump() {
  while (active < MAX_ACTIVE && waiting.length) {
    const job = waiting.shift();
    active++;
    job.run().finally(() => {
      active--;
      pump();
    });
  }
}

// ---- one file ----------------------------------------------------------------------

class Job {
  constructor(file) {
    this.file = file;
    this.profile = pickProfile(file);
    this.card = $("#card-template").content.firstElementChild.cloneNode(true);
    this.card.dataset.file = file.name;
    $(".name", this.card).textContent = file.name;
    $(".size", this.card).textContent = formatBytes(file.size);
    $(".badge", this.card).textContent = (file.name.split(".").pop() || "file").slice(0, 4);
    this.bar = $(".bar", this.card);
    this.bar.max = Math.max(1, file.size);
    this.bar.setAttribute("aria-label", `Upload of ${file.name}`);
    $(".pause", this.card).addEventListener("click", () => this.stop("paused"));
    $(".cancel", this.card).addEventListener("click", () => this.stop("cancelled"));
    $(".resume", this.card).addEventListener("click", () => this.queue());
    $(".retry", this.card).addEventListener("click", () => this.queue());
    list.append(this.card);
  }

  queue() {
    this.reset();
    this.profile = pickProfile(this.file); // the user may have picked another one since
    this.setPhase("queued");
    enqueue(this);
  }

  reset() {
    this.uploadId = null;
    this.stopReason = null;
    this.samples = [];
    this.started = 0;
    this.milestone = 0;
    this.bar.value = 0;
    $(".meter", this.card).textContent = "";
    const error = $(".error", this.card);
    error.hidden = true;
    error.textContent = "";
    for (const chip of this.card.querySelectorAll(".stages li")) chip.className = "";
    this.buttons({});
  }

  buttons({ pause = false, resume = false, cancel = false, retry = false }) {
    $(".pause", this.card).hidden = !pause;
    $(".resume", this.card).hidden = !resume;
    $(".cancel", this.card).hidden = !cancel;
    $(".retry", this.card).hidden = !retry;
  }

  setPhase(phase) {
    this.card.dataset.phase = phase;
    $(".phase", this.card).textContent = PHASE_LABELS[phase] ?? phase;
  }

  stop(reason) {
    this.stopReason = reason;
    if (this.running) this.controller.abort(new DOMException(`upload ${reason}`, "AbortError"));
    else this.stopped(); // paused: nothing in flight to interrupt
  }

  async run() {
    if (this.stopReason) return; // cancelled while queued
    this.controller = new AbortController();
    this.running = true;
    this.setPhase("preparing");
    this.buttons({ cancel: true });
    try {
      const record = await uploader.upload(this.file, {
        profile: this.profile,
        signal: this.controller.signal,
        onCreated: ({ id, multipart }) => this.created(id, multipart),
        onResume: ({ parts, partCount }) => {
          $(".meter", this.card).textContent = `Resuming: ${parts} of ${partCount} parts already in storage`;
          announce(`${this.file.name}: resuming, ${parts} of ${partCount} parts already stored`);
        },
        onProgress: ({ loaded, total }) => this.progress(loaded, total),
        onStage: (status, entry) => this.stage(status, entry),
      });
      this.finish(record);
    } catch (err) {
      this.running = false;
      if (this.stopReason) await this.stopped();
      else this.fail(err);
    } finally {
      this.running = false;
      showRemembered();
    }
  }

  created(id, multipart) {
    this.uploadId = id;
    this.card.dataset.uploadId = id;
    this.setPhase("uploading");
    this.started = performance.now();
    // Only multipart uploads can be paused: storage keeps their parts.
    this.buttons({ pause: Boolean(multipart), cancel: true });
  }

  progress(loaded, total) {
    const now = performance.now();
    this.bar.value = loaded;
    this.samples.push([now, loaded]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 3000) this.samples.shift();
    const [t0, b0] = this.samples[0];
    const speed = now > t0 ? ((loaded - b0) * 1000) / (now - t0) : 0;
    const meter = $(".meter", this.card);
    if (loaded >= total) {
      const seconds = (now - this.started) / 1000;
      meter.textContent = `Sent ${formatBytes(total)}${seconds > 0 ? ` in ${seconds.toFixed(1)} s` : ""}`;
      this.setPhase("pipeline");
      this.buttons({});
    } else {
      const eta = speed > 0 ? ` · ${formatDuration((total - loaded) / speed)} left` : "";
      meter.textContent = `${formatBytes(loaded)} of ${formatBytes(total)} · ${formatBytes(Math.round(speed))}/s${eta}`;
    }
    const percent = Math.floor((loaded / Math.max(1, total)) * 4) * 25;
    if (percent > this.milestone) {
      this.milestone = percent;
      announce(`${this.file.name}: ${percent}% uploaded`);
    }
  }

  stage(status) {
    const chips = [...this.card.querySelectorAll(".stages li")];
    const at = STAGES.indexOf(status);
    if (at >= 0) {
      chips.forEach((chip, i) => {
        chip.className = i < at || status === "ready" ? "done" : i === at ? "active" : "";
      });
      if (status === "uploaded") chips[0].className = "done";
      if (status !== "ready") this.setPhase("pipeline");
      announce(`${this.file.name}: ${status}`);
    } else if (!["pending", "uploading"].includes(status)) {
      const bad = BAD_STAGE[status];
      const chip = chips.find((c) => c.dataset.stage === bad) ?? chips.find((c) => c.className !== "done");
      chip?.classList.add("bad");
      chip?.classList.remove("active");
    }
  }

  finish(record) {
    this.buttons({});
    this.card.dataset.status = record.status;
    if (record.status === "ready") {
      this.setPhase("ready");
      for (const chip of this.card.querySelectorAll(".stages li")) chip.className = "done";
      this.showRecord(record);
      announce(`${this.file.name} is ready`);
      return;
    }
    this.stage(record.status);
    this.setPhase(record.status in PHASE_LABELS ? record.status : "failed");
    const reason = record.reason || record.status;
    this.showError(reason.startsWith(record.status) ? reason : `${record.status}: ${reason}`);
  }

  showRecord(record) {
    const thumbs = [...record.thumbnails].sort((a, b) => a.size - b.size);
    const thumb = thumbs.find((t) => t.size >= 256) ?? thumbs.at(-1);
    if (thumb) {
      const img = document.createElement("img");
      img.src = thumb.url;
      const kind = record.detected?.video ? "Poster frame" : record.detected?.document ? "First page" : "Thumbnail";
      img.alt = `${kind} of ${record.filename}`;
      img.width = thumb.width;
      img.height = thumb.height;
      const box = $(".thumb", this.card);
      box.replaceChildren(img);
      box.removeAttribute("aria-hidden");
    }
    const detected = record.detected ?? {};
    const rows = [["Type", detected.type ?? record.content_type]];
    if (detected.width && detected.height) rows.push(["Dimensions", `${detected.width} × ${detected.height}`]);
    rows.push(["Size", formatBytes(detected.size ?? record.size)]);
    if (detected.exif?.camera_model) rows.push(["Camera", detected.exif.camera_model]);
    const video = detected.video;
    if (video) {
      rows.push(["Dimensions", `${video.width} × ${video.height}`]);
      if (video.duration != null) rows.push(["Duration", formatDuration(video.duration)]);
      rows.push(["Codecs", [video.video_codec, video.audio_codec].filter(Boolean).join(" + ")]);
    }
    const documentFacts = detected.document;
    if (documentFacts) {
      rows.push(["Pages", String(documentFacts.pages)]);
      if (documentFacts.title) rows.push(["Title", documentFacts.title]);
    }
    if (detected.sha256) rows.push(["SHA-256", `${detected.sha256.slice(0, 16)}…`, detected.sha256]);
    const meta = $(".meta", this.card);
    meta.replaceChildren();
    for (const [term, value, full] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      if (full) dd.title = full;
      meta.append(dt, dd);
    }
    meta.hidden = false;
  }

  showError(message) {
    const error = $(".error", this.card);
    error.textContent = message;
    error.hidden = false;
    this.buttons({ retry: true });
    announce(`${this.file.name}: ${message}`);
  }

  fail(err) {
    const refused = err instanceof ClearanceError && err.problem && !this.uploadId && err.status < 500;
    this.setPhase(refused ? "refused" : "error");
    this.showError(refused ? `Refused before upload: ${err.message}` : err.message || String(err));
  }

  async stopped() {
    if (this.stopReason === "paused") {
      this.setPhase("paused");
      $(".meter", this.card).textContent = "Paused: the parts sent so far stay in storage";
      this.buttons({ resume: true, cancel: true });
      announce(`${this.file.name}: paused`);
      return;
    }
    this.setPhase("cancelled");
    this.buttons({ retry: true });
    announce(`${this.file.name}: cancelled`);
    if (this.uploadId) {
      try {
        await uploader.cancel(this.uploadId);
      } catch (err) {
        $(".meter", this.card).textContent = `Could not delete the upload: ${err.message}`;
      }
    }
    showRemembered();
  }
}

function addFiles(files) {
  for (const file of files) new Job(file).queue();
}

// ---- picking and dropping ----------------------------------------------------------

$("#choose").addEventListener("click", () => picker.click());
picker.addEventListener("change", () => {
  addFiles([...picker.files]);
  picker.value = ""; // the same file can be chosen again (resume, retry)
});

for (const type of ["dragenter", "dragover"]) {
  dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    dropzone.classList.add("dragging");
  });
}
dropzone.addEventListener("dragleave", (event) => {
  if (!dropzone.contains(event.relatedTarget)) dropzone.classList.remove("dragging");
});
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropzone.classList.remove("dragging");
  addFiles([...(event.dataTransfer?.files ?? [])]);
});
// A file dropped beside the zone must not make the browser navigate away.
for (const type of ["dragover", "drop"]) {
  window.addEventListener(type, (event) => event.preventDefault());
}

/** Multipart uploads this browser left unfinished (a reload, a crash): they resume. */
function showRemembered() {
  const unfinished = uploader.remembered();
  const note = $("#remembered");
  note.hidden = unfinished.length === 0;
  const names = unfinished.map((p) => `${p.name} (${formatBytes(p.size)})`).join(", ");
  note.textContent = `Unfinished in this browser: ${names}. Add the same file again to resume where it stopped.`;
}

showRemembered();
document.body.dataset.ready = "true";
