// Types of beep-webrtc.js, the browser client of the beep-webrtc SFU (README "Client integration").

/** What `connect` needs. */
export interface ConnectOptions {
  /** The signalling endpoint: `wss://host/connect` (a relative or http(s) URL is resolved against the page). */
  url: string;
  /** Joins this conversation on the socket (`?conversation=`); omit when the app has called `POST /join` itself. */
  conversation?: string;
  /** How many members the client can hear at once (speaker slots); 1 to 16, default 3 (the server caps it at `MAX_SLOTS`). */
  slots?: number;
  /** The microphone (its first audio track is sent), or omit/null to listen only. Change it later with `setMicrophone`. */
  microphone?: MediaStream | MediaStreamTrack | null;
  /** Development mode only: the identity as query parameters. Otherwise the identity is the auth proxy's (cookies and headers the browser sends). */
  identity?: { userid: string; clientid: string };
  /** How long the first connection may take before `connect` rejects with code `"timeout"`; default 20000 ms. */
  timeoutMs?: number;
  /** Reconnection attempts in a row (backoff 0.5 s doubling to 15 s, ±20 %) before the call closes with `"unreachable"`; default 10. */
  maxRetries?: number;
  /** Play each slot's track in an `<audio>` element of the module's; default true. */
  play?: boolean;
  /** Handlers registered before anything happens, so none of the first events is missed (`{ members: m => ..., error: e => ... }`); `call.on` adds more later. */
  on?: { [K in keyof CallEvents]?: (value: CallEvents[K]) => void };
  /** The peer connection's configuration; default `{ iceServers: [] }` (the server is ICE-lite with public candidates). */
  rtcConfiguration?: RTCConfiguration;
}

export type CallState = "connecting" | "connected" | "reconnecting" | "closed";

/** One of the client's slots, and who is on it now. */
export interface Slot {
  /** Its index among the client's slots. */
  slot: number;
  /** The m-line of the client's offer that carries it. */
  mid: string;
  /** Who is on it; null when nobody is. */
  userid: string | null;
  clientid: string | null;
  /** The slot's incoming audio: one track per slot for the life of a peer connection, whoever is on it. */
  track: MediaStreamTrack | null;
}

/** A member of the conversation (the client itself included). */
export interface Member {
  userid: string;
  clientid: string;
}

/** A member speaking now, whether or not it is on one of the client's slots. */
export interface Speaker {
  userid: string;
  clientid: string;
  /** Its smoothed loudness in dBov (0 is full scale), in steps of 3 dB. */
  level: number;
}

/** A server `error::` frame (`code` as in the README), or the module's own: `timeout`, `unreachable`, `autoplay`, `bad-answer`, `closed`. */
export interface CallError {
  code: string;
  message: string;
}

export interface CallEvents {
  state: CallState;
  slots: Slot[];
  members: Member[];
  speakers: Speaker[];
  error: CallError;
  /** The server asked for a new offer (the module has made it); the reason, e.g. "worker-exited". */
  reconnect: string;
  /** An offer was sent (its SDP): the first, and one per reconnection. */
  offer: string;
  /** Other server events by their type (`quality`, `bite` in development mode), as sent. */
  [type: string]: unknown;
}

export interface Call {
  readonly url: string;
  readonly state: CallState;
  /** The latest of each event (null before the first). */
  readonly slots: Slot[] | null;
  readonly members: Member[] | null;
  readonly speakers: Speaker[] | null;
  /** The current peer connection (a new one per offer), for statistics. */
  readonly pc: RTCPeerConnection | null;
  /** Calls `fn` on every `name` event and returns a function that stops it; for state, slots, members and speakers, also at once with the latest value. */
  on<K extends keyof CallEvents>(name: K, fn: (value: CallEvents[K]) => void): () => void;
  off<K extends keyof CallEvents>(name: K, fn: (value: CallEvents[K]) => void): void;
  /** Switches the microphone, or mutes it with null: `replaceTrack`, no new offer. Resolves when the sender has it. */
  setMicrophone(microphone: MediaStream | MediaStreamTrack | null): Promise<void>;
  /** Starts the slots' audio after the browser refused to autoplay it (an `error` with code "autoplay"); call from a user gesture. */
  play(): void;
  /** Leaves: closes the media and the socket; the state becomes "closed". The microphone is the app's to stop. */
  leave(): void;
}

/** Opens the signalling socket, offers, and resolves once the media is connected; rejects with a `CallError`-shaped `Error` when the server refuses (e.g. `forbidden`) or the first connection times out. */
export declare function connect(options: ConnectOptions): Promise<Call>;
