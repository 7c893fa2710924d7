// beep-webrtc.js: the browser client of the beep-webrtc SFU, one dependency-free ES module.
// Types: beep-webrtc.d.ts beside it. Protocol: the README's "GET /connect" and "Speaker slots".
//
//   import { connect } from "./beep-webrtc.js";
//   const call = await connect({ url: "wss://host/connect", conversation: "c1", slots: 3, microphone: stream });
//   call.on("slots", slots => ...); call.on("members", m => ...); call.on("speakers", s => ...);
//   call.setMicrophone(null); call.leave();
//
// What it does for the app: one audio m-line per slot in the offer (the first one also
// carries the microphone, so the microphone can come and go with replaceTrack and never a new
// offer), trickle ICE, `type::payload` framing, each slot's `mid` mapped to its track (and
// played), a new offer when the server asks (`event::reconnect`), when the media fails and
// when the WebSocket drops, with backoff; the server's errors as `{code, message}`.
"use strict";

const RETRYABLE = new Set(["unavailable", "rate-limited", "join-timeout", "internal"]);

/** Opens a call; resolves once its media is connected (see beep-webrtc.d.ts). */
export function connect(options) {
  try {
    return new Call(options || {})._first;
  } catch (e) {
    return Promise.reject(e);
  }
}

class Call {
  constructor(o) {
    if (!o.url) throw new TypeError("connect: options.url (the /connect WebSocket URL) is required");
    this._o = {
      slots: Math.max(1, Math.min(16, Math.floor(o.slots ?? 3))),
      timeoutMs: o.timeoutMs ?? 20000,
      maxRetries: o.maxRetries ?? 10,
      play: o.play ?? true,
      rtc: o.rtcConfiguration ?? { iceServers: [] },
    };
    const url = new URL(o.url, globalThis.location ? globalThis.location.href : undefined);
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    if (o.conversation) url.searchParams.set("conversation", o.conversation);
    if (o.identity) {
      url.searchParams.set("userid", o.identity.userid);
      url.searchParams.set("clientid", o.identity.clientid);
    }
    this.url = url.toString();
    this.state = "connecting";
    this.slots = null;
    this.members = null;
    this.speakers = null;
    this.pc = null;
    this.ws = null;
    this._mic = trackOf(o.microphone);
    this._on = new Map();
    for (const [name, fn] of Object.entries(o.on || {})) this.on(name, fn);
    this._retries = 0;
    this._timer = null;
    this._audio = new Map(); // MediaStreamTrack -> <audio> playing it
    this._first = new Promise((resolve, reject) => { this._settle = { resolve, reject }; });
    this._why = "";
    this._deadline = setTimeout(() => this._fail({ code: "timeout", message: `not connected within ${this._o.timeoutMs} ms${this._why && ": " + this._why}` }), this._o.timeoutMs);
    this._open();
  }

  /** Calls fn(value) on every `name` event; state, slots, members and speakers also at once with the latest. */
  on(name, fn) {
    if (!this._on.has(name)) this._on.set(name, new Set());
    this._on.get(name).add(fn);
    const now = { state: this.state, slots: this.slots, members: this.members, speakers: this.speakers }[name];
    if (now != null) fn(now);
    return () => this.off(name, fn);
  }

  off(name, fn) {
    const set = this._on.get(name);
    if (set) set.delete(fn);
  }

  /** Switches (a MediaStream or track) or mutes (null) the microphone: replaceTrack, no new offer. */
  async setMicrophone(stream) {
    this._mic = trackOf(stream);
    const sender = this._sender();
    if (sender) await sender.replaceTrack(this._mic);
  }

  /** Starts the slots' audio again after the browser's autoplay policy refused it (call from a user gesture). */
  play() {
    for (const a of this._audio.values()) a.play().catch(() => {});
  }

  /** Leaves the conversation: closes the media and the socket; the state becomes "closed". */
  leave() {
    this._close();
  }

  // ---- internals ----

  _emit(name, value) {
    for (const fn of [...(this._on.get(name) || [])]) {
      try { fn(value); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }

  _state(s) {
    if (this.state === s) return;
    this.state = s;
    this._emit("state", s);
  }

  _sender() {
    const t = this.pc && this.pc.getTransceivers()[0];
    return t ? t.sender : null;
  }

  _open() {
    clearTimeout(this._timer);
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => { if (this.ws === ws) this._renegotiate(); };
    ws.onmessage = (m) => { if (this.ws === ws) this._frame(String(m.data)); };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (ws._fatal) return;
      this._retry(`the signalling socket closed (code ${e.code})`);
    };
  }

  _renegotiate() {
    this._offer().catch((e) => this._retry(`the browser could not make an offer: ${e && e.message}`));
  }

  async _offer() {
    this._closePc();
    const pc = new RTCPeerConnection(this._o.rtc);
    this.pc = pc;
    pc._chain = Promise.resolve();
    pc.addTransceiver(this._mic || "audio", { direction: "sendrecv" });
    for (let i = 1; i < this._o.slots; i++) pc.addTransceiver("audio", { direction: "recvonly" });
    let sent = false;
    const early = [];
    pc.onicecandidate = (e) => {
      const frame = "ice::" + JSON.stringify(e.candidate ? e.candidate.toJSON() : { candidate: "" });
      if (sent) this._send(frame); else early.push(frame);
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      if (pc.connectionState === "connected") {
        this._retries = 0;
        this._state("connected");
        clearTimeout(this._deadline);
        if (this._settle) { this._settle.resolve(this); this._settle = null; }
      } else if (pc.connectionState === "failed") {
        this._retry("the media connection failed");
      }
    };
    await pc.setLocalDescription(await pc.createOffer());
    if (this.pc !== pc) return;
    this._send("offer::" + pc.localDescription.sdp);
    this._emit("offer", pc.localDescription.sdp);
    sent = true;
    early.forEach((f) => this._send(f));
  }

  _send(text) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
  }

  _frame(text) {
    const i = text.indexOf("::");
    const type = i < 0 ? "" : text.slice(0, i);
    const payload = i < 0 ? text : text.slice(i + 2);
    const pc = this.pc;
    if (type === "answer" && pc) {
      pc._chain = pc._chain.then(() => pc.setRemoteDescription({ type: "answer", sdp: payload }))
        .catch((e) => this._emit("error", { code: "bad-answer", message: String(e && e.message) }));
    } else if (type === "ice" && pc) {
      let init;
      try { init = JSON.parse(payload); } catch (_) { init = { candidate: payload, sdpMid: "0", sdpMLineIndex: 0 }; }
      pc._chain = pc._chain.then(() => pc.addIceCandidate(init)).catch(() => {});
    } else if (type === "event") {
      let ev;
      try { ev = JSON.parse(payload); } catch (_) { return; }
      this._event(ev);
    } else if (type === "error") {
      let err;
      try { err = JSON.parse(payload); } catch (_) { err = { code: "internal", message: payload }; }
      this._emit("error", err);
      if (!RETRYABLE.has(err.code)) {
        if (this.ws) this.ws._fatal = true;
        this._fail(err);
      }
    }
  }

  _event(ev) {
    switch (ev.type) {
      case "slots":
        this._rawSlots = Array.isArray(ev.slots) ? ev.slots : [];
        this._slots(this._rawSlots);
        break;
      case "members":
        this.members = Array.isArray(ev.members) ? ev.members : [];
        this._emit("members", this.members);
        break;
      case "speakers":
        this.speakers = Array.isArray(ev.speakers) ? ev.speakers : [];
        this._emit("speakers", this.speakers);
        break;
      case "reconnect":
        this._emit("reconnect", ev.reason);
        this._state("reconnecting");
        this._renegotiate();
        break;
      default:
        this._emit(ev.type, ev);
    }
  }

  // The slots with their tracks: a slot's mid names its transceiver, whose receiver's track
  // carries whoever is on it.
  _slots(raw) {
    const byMid = new Map((this.pc ? this.pc.getTransceivers() : []).map((t) => [t.mid, t]));
    this.slots = raw.map((s, i) => {
      const t = byMid.get(s.mid == null ? null : String(s.mid));
      const track = t ? t.receiver.track : null;
      if (track && this._o.play) this._playTrack(track);
      return { slot: s.slot ?? i, mid: s.mid, userid: s.userid ?? null, clientid: s.clientid ?? null, track };
    });
    this._emit("slots", this.slots);
  }

  _playTrack(track) {
    if (this._audio.has(track) || typeof Audio === "undefined") return;
    const a = new Audio();
    a.autoplay = true;
    a.srcObject = new MediaStream([track]);
    this._audio.set(track, a);
    a.play().catch(() => this._emit("error", { code: "autoplay", message: "the browser will not play audio before a user gesture: call play() from one" }));
  }

  _closePc() {
    const pc = this.pc;
    this.pc = null;
    if (pc) {
      pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
      pc.close();
    }
    for (const a of this._audio.values()) { a.pause(); a.srcObject = null; }
    this._audio.clear();
  }

  _retry(why) {
    if (this.state === "closed") return;
    this._why = why;
    this._closePc();
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(); }
    // The first connect tries until its timeout; later ones until maxRetries.
    if (++this._retries > this._o.maxRetries && !this._settle) {
      this._fail({ code: "unreachable", message: `${why}; gave up after ${this._o.maxRetries} attempts` });
      return;
    }
    if (!this._settle) this._state("reconnecting");
    const delay = Math.min(15000, 500 * 2 ** (this._retries - 1)) * (0.8 + 0.4 * Math.random());
    clearTimeout(this._timer);
    this._timer = setTimeout(() => { if (this.state !== "closed") this._open(); }, delay);
  }

  _fail(err) {
    if (this.state === "closed") return;
    if (this._settle) {
      const e = Object.assign(new Error(`${err.code}: ${err.message}`), err);
      this._settle.reject(e);
      this._settle = null;
    } else if (err.code === "unreachable" || err.code === "timeout") {
      this._emit("error", err);
    }
    this._close();
  }

  _close() {
    clearTimeout(this._timer);
    clearTimeout(this._deadline);
    this._closePc();
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(1000, "leaving"); }
    if (this._settle) { this._settle.reject(Object.assign(new Error("left"), { code: "closed", message: "left" })); this._settle = null; }
    this._state("closed");
  }
}

function trackOf(m) {
  if (!m) return null;
  if (typeof m.getAudioTracks === "function") return m.getAudioTracks()[0] || null;
  return m; // a MediaStreamTrack
}
