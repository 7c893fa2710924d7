#!/usr/bin/python3
"""Independent WebRTC test peer for the "front" audio SFU, on Debian's aiortc 1.4.

Run with Debian's interpreter (it has python3-aiortc, python3-websockets 10.4, python3-numpy):

    /usr/bin/python3 tests/aiortc_peer.py --url 'ws://127.0.0.1:PORT/connect?conversation=X' \
        --userid U --clientid C --tone HZ --seconds S [--slots N] [--expect-hz HZ ...]

What it does
  * Opens the signalling WebSocket with header  X-User-Claim: {"userid":U,"clientid":C}.
  * Offers one sendrecv audio transceiver (mid "0") carrying a generated HZ sine tone, plus N-1
    recvonly audio transceivers (mids "1".."N-1") when --slots N > 1.
  * Sends `offer::<sdp>` (aiortc gathers inside setLocalDescription, so the offer already holds every
    candidate; this peer never sends `ice::`), waits up to --answer-timeout s for `answer::<sdp>`.
  * Applies the answer and runs for --seconds S, decoding audio on every incoming track while it keeps
    reading the WebSocket: `event::<json>` and `error::<json>` are recorded; trickled `ice::<json>`
    server candidates are parsed and (unless --ignore-trickle) added; `{"candidate":""}` = end of them.
  * Prints exactly one line `RESULT <json>` on stdout (also on failures/timeouts), diagnostics on stderr.

Per incoming track (labelled by its transceiver's mid): decoded frames, RMS and dominant frequency
(numpy FFT, Hann window) over the last --window s of received samples, the first 0.5 s skipped.
RMS is over that same window, full scale = 1.0.

Exit codes
  0  pass. With --expect-hz: every expected frequency is the dominant one (±--tolerance Hz) of some
     track with rms > 0.01, and no track's dominant frequency is within ±--tolerance of our own --tone
     (never hear yourself). Without --expect-hz: the peer connection reached "connected".
  1  fail (the checks above did not hold)
  2  signalling failure: WebSocket could not be opened, no answer within --answer-timeout s,
     server `error::` or socket close before the answer, or the answer could not be applied
  3  overall hard timeout (--seconds + 30 s) hit
"""
import argparse
import asyncio
import fractions
import json
import logging
import os
import signal
import sys
import time

import aioice.ice
import av
import numpy as np
import websockets  # Debian python3-websockets 10.4: websockets.connect(url, extra_headers=...)
from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
SKIP_SECONDS = 0.5   # ignore the first 0.5 s of each incoming track (decoder/jitter warm-up)
MIN_RMS = 0.01


def log(msg):
    print(f"[aiortc_peer {time.monotonic() - T_START:7.3f}s] {msg}", file=sys.stderr, flush=True)


T_START = time.monotonic()


class ToneTrack(MediaStreamTrack):
    """20 ms s16 mono 48 kHz frames of a sine tone, paced in real time."""

    kind = "audio"

    def __init__(self, hz, amplitude=0.5):
        super().__init__()
        self.hz = float(hz)
        self.amplitude = amplitude
        self._n = 0          # samples produced so far (= pts of the next frame)
        self._t0 = None      # monotonic time of pts 0
        self.frames_sent = 0

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            wait = self._t0 + self._n / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        idx = np.arange(self._n, self._n + FRAME_SAMPLES, dtype=np.float64)
        pcm = np.round(self.amplitude * 32767.0 * np.sin(2.0 * np.pi * self.hz * idx / SAMPLE_RATE))
        frame = av.AudioFrame.from_ndarray(pcm.astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._n += FRAME_SAMPLES
        self.frames_sent += 1
        return frame


class TrackStats:
    """Accumulates one incoming track's decoded audio."""

    def __init__(self, mid, window_s):
        self.mid = mid
        self.frames = 0
        self.samples = 0                  # mono samples received in total
        self.first_frame_ms = None        # since offer sent
        self.keep = int(window_s * SAMPLE_RATE)
        self.skip = int(SKIP_SECONDS * SAMPLE_RATE)
        self.chunks = []                  # mono float chunks after the skipped prefix
        self.kept = 0
        self.ended = False

    def add(self, frame):
        pcm = frame.to_ndarray()  # aiortc's Opus decoder gives s16 *packed stereo*: shape (1, 2*960)
        channels = len(frame.layout.channels)
        if frame.format.is_planar:
            mono = pcm[0]
        else:
            mono = pcm.reshape(-1, channels)[:, 0]
        if frame.format.name != "s16":
            raise ValueError(f"unexpected decoded format {frame.format.name}")
        mono = mono.astype(np.float64) / 32768.0
        if frame.sample_rate and frame.sample_rate != SAMPLE_RATE:
            raise ValueError(f"unexpected decoded rate {frame.sample_rate}")
        self.frames += 1
        before = self.samples
        self.samples += mono.size
        if self.samples <= self.skip:
            return
        if before < self.skip:
            mono = mono[self.skip - before:]
        self.chunks.append(mono)
        self.kept += mono.size
        while self.chunks and self.kept - self.chunks[0].size >= self.keep:
            self.kept -= self.chunks.pop(0).size

    def analyse(self):
        out = {"mid": self.mid, "frames": self.frames, "rms": 0.0, "dominant_hz": None,
               "analysed_s": 0.0, "first_frame_ms": self.first_frame_ms}
        if not self.chunks:
            return out
        x = np.concatenate(self.chunks)[-self.keep:]
        out["analysed_s"] = round(x.size / SAMPLE_RATE, 3)
        rms = float(np.sqrt(np.mean(x ** 2)))
        out["rms"] = round(rms, 4)
        if rms < 1e-4 or x.size < 2048:
            return out  # silence: no meaningful dominant frequency
        spec = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))
        freqs = np.fft.rfftfreq(x.size, 1.0 / SAMPLE_RATE)
        spec[freqs < 20.0] = 0.0
        k = int(np.argmax(spec))
        hz = float(freqs[k])
        if 0 < k < spec.size - 1:  # parabolic interpolation between bins
            a, b, c = spec[k - 1], spec[k], spec[k + 1]
            den = a - 2 * b + c
            if den != 0:
                hz += 0.5 * (a - c) / den * (freqs[1] - freqs[0])
        out["dominant_hz"] = round(hz, 1)
        return out


class Peer:
    def __init__(self, args):
        self.args = args
        self.result = {
            "userid": args.userid,
            "clientid": args.clientid,
            "tone_hz": args.tone,
            "state": "new",            # "connected" if it was ever reached, else the last state
            "states": [],              # every connectionState change, in order
            "ice_states": [],
            "answer_ms": None,         # offer sent -> answer received
            "connected_ms": None,      # offer sent -> connectionState "connected"
            "tracks": [],
            "events": [],
            "errors": [],
            "ice_received": 0,         # trickled server candidates (non-empty)
            "ice_applied": 0,          # handed to aiortc (which silently drops any after end-of-candidates)
            "ice_retagged": 0,         # trickled with a non-first BUNDLE mid, retagged to the first mid
            "ice_end": False,          # {"candidate":""} received
            "ws_close": None,
            "outbound_packets": None,
            "outbound_bytes": None,
            "tone_frames_sent": 0,
            "answer_directions": None,
            "failure": None,
        }
        self.pc = None
        self.ws = None
        self.tone = None
        self.tracks = {}           # mid -> TrackStats
        self.track_tasks = []
        self.t_offer = None
        self.answer_fut = None
        self.remote_set = False
        self.pending_ice = []
        self.closing = False

    def ms_since_offer(self):
        return round((time.monotonic() - self.t_offer) * 1e3, 1) if self.t_offer else None

    # ---------------------------------------------------------------- WebSocket
    async def reader(self):
        try:
            async for msg in self.ws:
                if isinstance(msg, bytes):
                    self.result["errors"].append({"code": "client.binary_frame", "message": f"{len(msg)} bytes"})
                    continue
                kind, sep, payload = msg.partition("::")
                if not sep:
                    self.result["errors"].append({"code": "client.bad_frame", "message": msg[:200]})
                    continue
                if kind == "answer":
                    if self.answer_fut.done():
                        self.result["errors"].append({"code": "client.duplicate_answer", "message": ""})
                    else:
                        self.answer_fut.set_result(payload)
                elif kind == "ice":
                    await self.on_ice(payload)
                elif kind == "event":
                    ev = self.parse_json(payload)
                    log(f"event {json.dumps(ev)}")
                    self.result["events"].append(ev)
                elif kind == "error":
                    err = self.parse_json(payload)
                    log(f"server error {json.dumps(err)}")
                    self.result["errors"].append(err)
                    if not self.answer_fut.done():
                        self.answer_fut.set_exception(RuntimeError(f"server error before answer: {payload}"))
                else:
                    self.result["errors"].append({"code": "client.unknown_type", "message": msg[:200]})
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001 - record anything unexpected
            self.result["errors"].append({"code": "client.ws_reader", "message": repr(e)})
        finally:
            self.result["ws_close"] = {"code": self.ws.close_code, "reason": self.ws.close_reason,
                                       "at_ms": self.ms_since_offer()}
            log(f"websocket closed code={self.ws.close_code} reason={self.ws.close_reason!r}")
            if self.answer_fut and not self.answer_fut.done():
                self.answer_fut.set_exception(RuntimeError(
                    f"websocket closed before answer (code={self.ws.close_code} reason={self.ws.close_reason!r})"))

    @staticmethod
    def parse_json(payload):
        try:
            return json.loads(payload)
        except ValueError:
            return {"raw": payload}

    async def on_ice(self, payload):
        try:
            init = json.loads(payload)
            cand = init["candidate"]
        except (ValueError, KeyError, TypeError) as e:
            self.result["errors"].append({"code": "client.bad_ice", "message": f"{e!r}: {payload[:200]}"})
            return
        if cand == "":
            self.result["ice_end"] = True
        else:
            self.result["ice_received"] += 1
            try:
                sdp_cand = cand[len("candidate:"):] if cand.startswith("candidate:") else cand
                c = candidate_from_sdp(sdp_cand)
                c.sdpMid = init.get("sdpMid")
                c.sdpMLineIndex = init.get("sdpMLineIndex")
                if c.sdpMid is None and c.sdpMLineIndex is None:
                    raise ValueError("candidate has neither sdpMid nor sdpMLineIndex")
            except Exception as e:  # noqa: BLE001
                self.result["errors"].append({"code": "client.bad_ice", "message": f"{e!r}: {payload[:200]}"})
                return
            init = c
        if self.args.ignore_trickle:
            return
        if self.remote_set:
            await self.apply_ice(init)
        else:
            self.pending_ice.append(init)

    async def apply_ice(self, cand):
        """cand: an RTCIceCandidate, or the dict {"candidate": ""} meaning end-of-candidates."""
        try:
            if isinstance(cand, RTCIceCandidate):
                # aiortc 1.4 silently drops candidates whose sdpMid is a *bundled* (non-first) mid, and
                # addIceCandidate does not accept sdpMLineIndex alone: map the index to the mid ourselves.
                # Browsers accept a candidate tagged with any mid of the BUNDLE group, so retag those with
                # the first mid (the one whose transport aiortc keeps) and count how often that was needed.
                ts = self.pc.getTransceivers()
                if cand.sdpMid is None and cand.sdpMLineIndex is not None and cand.sdpMLineIndex < len(ts):
                    cand.sdpMid = ts[cand.sdpMLineIndex].mid
                if cand.sdpMid != ts[0].mid and any(t.mid == cand.sdpMid for t in ts):
                    cand.sdpMid = ts[0].mid
                    self.result["ice_retagged"] += 1
                await self.pc.addIceCandidate(cand)
                self.result["ice_applied"] += 1
            else:
                # aiortc 1.4 has no addIceCandidate(None); signal end-of-candidates on the ICE transport.
                ice = self.pc.getTransceivers()[0].sender.transport.transport
                await ice.addRemoteCandidate(None)
        except Exception as e:  # noqa: BLE001
            self.result["errors"].append({"code": "client.ice_apply", "message": repr(e)})

    # ---------------------------------------------------------------- media
    def on_track(self, track):
        mid = next((t.mid for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        log(f"incoming track kind={track.kind} mid={mid}")
        if track.kind != "audio":
            return
        st = self.tracks.setdefault(mid, TrackStats(mid, self.args.window))

        async def consume():
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    st.ended = True
                    return
                if st.first_frame_ms is None:
                    st.first_frame_ms = self.ms_since_offer()
                try:
                    st.add(frame)
                except Exception as e:  # noqa: BLE001
                    self.result["errors"].append({"code": "client.decode", "message": f"mid {mid}: {e!r}"})
                    return

        self.track_tasks.append(asyncio.ensure_future(consume()))

    def on_state(self):
        s = self.pc.connectionState
        log(f"connectionState={s}")
        self.result["states"].append(s)
        if s == "connected" and self.result["connected_ms"] is None:
            self.result["connected_ms"] = self.ms_since_offer()
        if self.result["state"] != "connected" and not self.closing:
            self.result["state"] = s

    # ---------------------------------------------------------------- main flow
    async def run(self):
        a = self.args
        claim = a.claim if a.claim is not None else json.dumps(
            {"userid": a.userid, "clientid": a.clientid}, separators=(",", ":"))
        headers = {} if a.no_claim else {"X-User-Claim": claim}

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.on("connectionstatechange", self.on_state)
        self.pc.on("iceconnectionstatechange", lambda: self.result["ice_states"].append(self.pc.iceConnectionState))
        self.pc.on("track", self.on_track)
        self.tone = ToneTrack(a.tone, a.amplitude)
        self.pc.addTransceiver(self.tone, direction="sendrecv")
        for _ in range(a.slots - 1):
            self.pc.addTransceiver("audio", direction="recvonly")

        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers all candidates here
        offer_sdp = self.pc.localDescription.sdp
        if a.unify_ice:
            offer_sdp = unify_bundle_ice(offer_sdp)
        if a.dump_sdp:
            log("offer SDP:\n" + offer_sdp)

        try:
            self.ws = await asyncio.wait_for(
                websockets.connect(a.url, extra_headers=headers, max_size=None, open_timeout=a.answer_timeout),
                a.answer_timeout)
        except Exception as e:  # noqa: BLE001 - includes InvalidStatusCode (HTTP 4xx on the upgrade)
            return self.fail(2, f"websocket connect failed: {e!r}")

        self.answer_fut = asyncio.get_running_loop().create_future()
        reader = asyncio.ensure_future(self.reader())
        try:
            self.t_offer = time.monotonic()
            try:
                await self.ws.send("offer::" + offer_sdp)
            except websockets.ConnectionClosed as e:
                await asyncio.sleep(0.05)  # let the reader record a preceding error:: frame
                last = self.result["errors"][-1] if self.result["errors"] else None
                return self.fail(2, f"websocket closed before the offer could be sent ({e}); last error: {last}")
            log("offer sent")
            try:
                answer_sdp = await asyncio.wait_for(asyncio.shield(self.answer_fut), a.answer_timeout)
            except asyncio.TimeoutError:
                return self.fail(2, f"no answer within {a.answer_timeout:g} s")
            except RuntimeError as e:
                return self.fail(2, str(e))
            self.result["answer_ms"] = self.ms_since_offer()
            log(f"answer after {self.result['answer_ms']} ms")
            if a.dump_sdp:
                log("answer SDP:\n" + answer_sdp)
            self.result["answer_directions"] = [
                ln.strip()[2:] for ln in answer_sdp.splitlines()
                if ln.strip() in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")]
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
            except Exception as e:  # noqa: BLE001
                return self.fail(2, f"setRemoteDescription(answer) failed: {e!r}")
            self.remote_set = True
            for c in self.pending_ice:
                await self.apply_ice(c)
            self.pending_ice.clear()

            # run for S seconds after applying the answer
            deadline = time.monotonic() + a.seconds
            while time.monotonic() < deadline:
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                if self.pc.connectionState in ("failed", "closed"):
                    log(f"peer connection {self.pc.connectionState}; stopping early")
                    break

            await self.collect_stats()
            return self.verdict()
        finally:
            await self.shutdown(reader)

    async def collect_stats(self):
        try:
            t0 = self.pc.getTransceivers()[0]
            for s in (await t0.sender.getStats()).values():
                if s.type == "outbound-rtp":
                    self.result["outbound_packets"] = s.packetsSent
                    self.result["outbound_bytes"] = s.bytesSent
        except Exception as e:  # noqa: BLE001
            self.result["errors"].append({"code": "client.stats", "message": repr(e)})
        inbound = {}
        for t in self.pc.getTransceivers():
            try:
                for s in (await t.receiver.getStats()).values():
                    if s.type == "inbound-rtp":
                        inbound[t.mid] = s.packetsReceived
            except Exception:  # noqa: BLE001 - no transport / nothing received on this mid
                pass
        self.fill_tracks(inbound)

    def fill_tracks(self, inbound=None):
        tracks = []
        for mid in sorted(self.tracks, key=lambda m: (m is None, str(m).zfill(4))):
            t = self.tracks[mid].analyse()
            if inbound is not None:
                t["inbound_packets"] = inbound.get(mid)
            tracks.append(t)
        self.result["tracks"] = tracks
        self.result["tone_frames_sent"] = self.tone.frames_sent if self.tone else 0

    def verdict(self):
        r, a = self.result, self.args
        if not a.expect_hz:
            if r["state"] == "connected":
                return 0
            r["failure"] = f"never connected (states {r['states']})"
            return 1
        tol = a.tolerance
        problems = []
        for want in a.expect_hz:
            if not any(t["dominant_hz"] is not None and abs(t["dominant_hz"] - want) <= tol and t["rms"] > MIN_RMS
                       for t in r["tracks"]):
                problems.append(f"no track with dominant {want:g}±{tol:g} Hz and rms>{MIN_RMS}")
        for t in r["tracks"]:
            if t["dominant_hz"] is not None and abs(t["dominant_hz"] - a.tone) <= tol:
                problems.append(f"mid {t['mid']} carries our own tone ({t['dominant_hz']} Hz)")
        if problems:
            r["failure"] = "; ".join(problems)
            return 1
        return 0

    def fail(self, code, msg):
        log(f"FAIL: {msg}")
        self.result["failure"] = msg
        return code

    async def shutdown(self, reader=None):
        self.closing = True  # our own close is not a state the server made us reach
        for t in self.track_tasks:
            t.cancel()
        if self.tone:
            self.tone.stop()
        if self.pc:
            try:
                await asyncio.wait_for(self.pc.close(), 5)
            except Exception as e:  # noqa: BLE001
                log(f"pc.close: {e!r}")
        if self.ws:
            try:
                await asyncio.wait_for(self.ws.close(), 5)
            except Exception as e:  # noqa: BLE001
                log(f"ws.close: {e!r}")
        if reader:
            try:
                await asyncio.wait_for(reader, 5)
            except Exception:  # noqa: BLE001
                reader.cancel()


def unify_bundle_ice(sdp):
    """aiortc 1.4 gives every m-line its own ICE agent (own port, ice-ufrag, ice-pwd, candidates) even when
    it offers BUNDLE; once BUNDLE is accepted it keeps only the first m-line's agent. webrtc-rs rejects
    differing credentials (ErrSessionDescriptionConflictingIceUfrag/Pwd). This rewrites the *sent* offer the
    way a BUNDLE-aware server would read it: every later m-line gets the first m-line's ufrag/pwd and loses
    its candidates. aiortc itself is unaffected (it only ever uses the first m-line's agent)."""
    lines = sdp.splitlines()
    out, section, ufrag, pwd = [], -1, None, None
    for ln in lines:
        if ln.startswith("m="):
            section += 1
        if section == 0 and ln.startswith("a=ice-ufrag:"):
            ufrag = ln
        if section == 0 and ln.startswith("a=ice-pwd:"):
            pwd = ln
        if section >= 1:
            if ln.startswith("a=candidate:") or ln == "a=end-of-candidates":
                continue
            if ln.startswith("a=ice-ufrag:") and ufrag:
                ln = ufrag
            elif ln.startswith("a=ice-pwd:") and pwd:
                ln = pwd
        out.append(ln)
    return "\r\n".join(out) + "\r\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="ws://HOST:PORT/connect?conversation=ID")
    p.add_argument("--userid", required=True)
    p.add_argument("--clientid", required=True)
    p.add_argument("--tone", type=float, required=True, help="frequency (Hz) of the sine tone we send")
    p.add_argument("--seconds", type=float, required=True, help="run time after the answer is applied")
    p.add_argument("--slots", type=int, default=1,
                   help="audio transceivers in the offer: 1 sendrecv (mid 0) + N-1 recvonly (default 1)")
    p.add_argument("--expect-hz", type=float, action="append", default=[],
                   help="frequency that some incoming track must carry (repeatable: every one must be heard)")
    p.add_argument("--tolerance", type=float, default=15.0, help="± Hz for the frequency checks (default 15)")
    p.add_argument("--amplitude", type=float, default=0.5, help="tone amplitude, full scale = 1 (default 0.5)")
    p.add_argument("--window", type=float, default=2.0, help="analysis window in s (default 2)")
    p.add_argument("--answer-timeout", type=float, default=15.0, help="s to wait for answer:: (default 15)")
    p.add_argument("--unify-ice", action="store_true",
                   help="send the offer with every BUNDLEd m-line carrying the first m-line's ice-ufrag/pwd and no "
                        "candidates (aiortc gives each m-line its own; webrtc-rs rejects that when --slots > 1)")
    p.add_argument("--ignore-trickle", action="store_true", help="parse server ice:: but do not add it")
    p.add_argument("--claim", help="send this X-User-Claim value verbatim instead of the JSON built from ids")
    p.add_argument("--no-claim", action="store_true", help="omit the X-User-Claim header")
    p.add_argument("--loopback", dest="loopback", action="store_true", default=True,
                   help="gather only 127.0.0.1 (default)")
    p.add_argument("--no-loopback", dest="loopback", action="store_false",
                   help="let aioice gather the machine's interface addresses instead")
    p.add_argument("--dump-sdp", action="store_true", help="log the offer and answer SDP on stderr")
    p.add_argument("--debug", action="store_true", help="aiortc/aioice debug logging on stderr")
    a = p.parse_args(argv)
    if a.slots < 1:
        p.error("--slots must be >= 1")
    return a


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)
    if args.loopback:
        # aioice never gathers 127.0.0.1 by itself; force a loopback-only host candidate.
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    hard = args.seconds + 30.0

    # Last resort if the event loop itself wedges: print what we have and leave.
    def on_alarm(signum, frame):
        peer.result["failure"] = "hard timeout (event loop stuck)"
        print("RESULT " + json.dumps(peer.result), flush=True)
        os._exit(3)

    async def runner():
        try:
            return await asyncio.wait_for(peer.run(), hard)
        except asyncio.TimeoutError:
            peer.result["failure"] = f"hard timeout {hard:g} s"
            peer.fill_tracks()
            try:
                await asyncio.wait_for(peer.shutdown(), 8)
            except Exception:  # noqa: BLE001
                pass
            return 3

    peer = None
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    peer = Peer(args)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(hard) + 10)
    try:
        code = loop.run_until_complete(runner())
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        peer.result["failure"] = f"crash: {e!r}"
        code = 1
    finally:
        signal.alarm(0)
    if not peer.result["tracks"] and peer.tracks:
        peer.fill_tracks()
    print("RESULT " + json.dumps(peer.result), flush=True)
    try:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    except Exception:  # noqa: BLE001
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
