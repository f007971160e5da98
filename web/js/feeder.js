// Feeds one run's fMP4 fragments into a MediaSource (for web/js/player.js). No side effects: the
// frontend imports every .js file of the pack, and this one registers nothing.
//
// The player passes on the fragment index and the playing position; the feeder keeps a window of
// AHEAD seconds ahead and BEHIND behind that position in the SourceBuffer and fetches what is missing,
// starting at a keyframe (or right after what is buffered) so the browser can decode it.

export const AHEAD = 30;
export const BEHIND = 30;

/** Index of the fragment holding frame `frame` ([first frame, frames, key] each, in order), or -1. */
export function fragmentAt(meta, frame) {
  let lo = 0, hi = meta.length - 1, found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (meta[mid] && meta[mid][0] <= frame) { found = mid; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

export class Feeder {
  /** init: {base (URL ending in '/'), mime, fps, meta, firstAvail, finished}; post(message) reports
   * {type: "appended" | "dropped" | "error" | "ended", ...} to the player. */
  constructor(ms, init, post) {
    this.ms = ms;
    this.base = init.base;
    this.mime = init.mime;
    this.fps = init.fps;
    this.meta = (init.meta ?? []).slice();
    this.firstAvail = init.firstAvail ?? 0;
    this.finished = !!init.finished;
    this.t = init.t ?? 0;
    this.post = post;
    this.skip = new Set();
    this.closed = false;
    ms.addEventListener("sourceopen", () => this.open(), { once: true });
  }

  async open() {
    try {
      this.sb = this.ms.addSourceBuffer(this.mime);
      await this.append(await this.fetch("init.mp4"));
      this.ready = true;
      this.pump();
    } catch (err) {
      this.post({ type: "error", message: err.message });
    }
  }

  // messages of the player
  fragment(d) {
    this.meta[d.index] = d.meta;
    this.firstAvail = d.firstAvail;
    this.pump();
  }

  end() {
    this.finished = true;
    this.pump();
  }

  time(d) {
    this.t = d.t;
    this.pump();
  }

  close() {
    this.closed = true;
  }

  async fetch(part) {
    const r = await fetch(this.base + part, { credentials: "same-origin" });
    if (!r.ok) {
      let msg = `HTTP ${r.status}`;
      try { msg = (await r.json()).error ?? msg; } catch { /* not JSON */ }
      const err = new Error(msg);
      err.status = r.status;
      throw err;
    }
    return r.arrayBuffer();
  }

  append(data) {
    const sb = this.sb;
    return new Promise((resolve, reject) => {
      const done = () => { sb.removeEventListener("error", bad); resolve(); };
      const bad = () => { sb.removeEventListener("updateend", done); reject(new Error("the browser refused a fragment")); };
      sb.addEventListener("updateend", done, { once: true });
      sb.addEventListener("error", bad, { once: true });
      sb.appendBuffer(data);
    });
  }

  remove(start, end) {
    const sb = this.sb;
    return new Promise((resolve) => {
      sb.addEventListener("updateend", resolve, { once: true });
      sb.remove(start, end);
    });
  }

  /** One SourceBuffer operation at a time; again while there is something to do. */
  async pump() {
    if (this.pumping) { this.again = true; return; }
    this.pumping = true;
    try {
      do {
        this.again = false;
        while (this.ready && !this.closed && this.ms.readyState !== "closed" && await this.step()) { /* next */ }
      } while (this.again);
    } catch (err) {
      this.post({ type: "error", message: err.message });
    } finally {
      this.pumping = false;
    }
  }

  covered(i) {
    const [first, frames] = this.meta[i];
    const a = first / this.fps, b = (first + frames) / this.fps, eps = 0.5 / this.fps;
    const r = this.sb.buffered;
    for (let k = 0; k < r.length; k++) if (r.start(k) <= a + eps && r.end(k) >= b - eps) return true;
    return false;
  }

  /** The next fragment to append, from the playing position through AHEAD seconds; -1: none. */
  next() {
    const meta = this.meta, fps = this.fps, t = this.t;
    const from = Math.max(this.firstAvail, fragmentAt(meta, Math.floor(t * fps)), 0);
    for (let j = from; j < meta.length && meta[j] && meta[j][0] / fps <= t + AHEAD; j++) {
      if (this.skip.has(j) || this.covered(j)) continue;
      let k = j;        // a fragment that does not start with a keyframe needs the one before it
      while (k > this.firstAvail && meta[k - 1] && !meta[k][2] && !this.covered(k - 1)) k--;
      if (!meta[k][2] && !(k > 0 && meta[k - 1] && this.covered(k - 1))) { this.skip.add(j); continue; }
      if (!this.skip.has(k)) return k;
    }
    return -1;
  }

  async step() {
    const t = this.t, r = this.sb.buffered;
    for (let k = 0; k < r.length; k++) {        // drop what is far from the playing position
      if (r.start(k) < t - BEHIND - 1) { await this.remove(r.start(k), Math.min(r.end(k), t - BEHIND)); return true; }
      const from = Math.max(r.start(k), t + AHEAD + 5);
      if (r.end(k) > t + AHEAD + 10 && from < r.end(k)) { await this.remove(from, r.end(k)); return true; }
    }
    const i = this.next();
    if (i >= 0) {
      let data;
      try {
        data = await this.fetch(`${i}.m4s`);
      } catch (err) {
        if (err.status !== 410 && err.status !== 404) throw err;
        this.skip.add(i);                        // dropped from the server's memory meanwhile
        this.firstAvail = Math.max(this.firstAvail, i + 1);
        this.post({ type: "dropped", firstAvail: this.firstAvail });
        return true;
      }
      if (this.closed) return false;
      try {
        await this.append(data);
      } catch (err) {
        if (err.name !== "QuotaExceededError") throw err;
        await this.remove(0, Math.max(0, t - 2));
        return true;
      }
      if (!this.covered(i)) this.skip.add(i);
      this.post({ type: "appended", index: i });
      return true;
    }
    const last = this.meta.length - 1;
    if (this.finished && last >= 0 && this.ms.readyState === "open" && !this.sb.updating &&
        (this.covered(last) || this.skip.has(last))) {
      this.ms.endOfStream();                   // the whole video: it plays to its end and stops there
      this.post({ type: "ended" });
    }
    return false;
  }
}
