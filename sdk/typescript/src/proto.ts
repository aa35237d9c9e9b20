// The service protocol: proto/linkd.proto loaded with protobufjs at run time,
// and the framing (a varint length, then one ServiceMessage).
import * as fs from "fs";
import * as path from "path";
import * as protobuf from "protobufjs";

/** Where linkd.proto is looked for: beside the compiled SDK (copied by the build), then the repo. */
function findProto(): string {
  const candidates = [
    process.env.LINKD_PROTO || "",
    path.join(__dirname, "linkd.proto"),
    path.resolve(__dirname, "../../../proto/linkd.proto"),
  ].filter(Boolean);
  for (const p of candidates) {
    if (fs.existsSync(p)) return p;
  }
  throw new Error("linkd.proto not found (looked in " + candidates.join(", ") + ")");
}

let serviceMessage: protobuf.Type | null = null;

export function serviceMessageType(): protobuf.Type {
  if (!serviceMessage) {
    const root = protobuf.loadSync(findProto());
    serviceMessage = root.lookupType("linkd.ServiceMessage");
  }
  return serviceMessage;
}

/** A decoded frame as a plain object: camelCase fields, 64-bit ints as strings, bytes as Buffers. */
export type Frame = { [key: string]: any; message?: string };

const toObjectOptions: protobuf.IConversionOptions = {
  longs: String,
  enums: Number,
  defaults: true,
  arrays: true,
  oneofs: true,
};

/** One frame from a plain object such as {registerService: {...}}: length-delimited bytes. */
export function encodeFrame(obj: Frame): Buffer {
  const T = serviceMessageType();
  const msg = T.fromObject(obj);
  const bytes = T.encodeDelimited(msg).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Decodes one ServiceMessage body (without its length prefix). Throws on malformed input. */
export function decodeFrame(body: Uint8Array): Frame {
  const T = serviceMessageType();
  const msg = T.decode(body);
  const obj = T.toObject(msg, toObjectOptions) as Frame;
  return obj;
}

/** The length prefix itself is broken: the stream cannot be resynchronised. */
export class MalformedFrameError extends Error {}

/** Longest varint a frame length may take: lengths are uint32, as protobuf's own readers take them. */
const MAX_LENGTH_BYTES = 5;

/**
 * Streaming frame reader: feed it socket chunks, it calls onFrame with each
 * complete frame body. Partial frames wait for more data, so at most
 * maxFrame bytes (plus the chunk being read) are buffered.
 *
 * A frame whose length is over maxFrame is skipped: onSkip is told its
 * length, and its bytes are discarded as they arrive, never buffered. The
 * frames after it are read as usual: one frame too big for this process
 * must not cost every other request on the link.
 *
 * Only a broken length prefix (a varint longer than 5 bytes or over
 * 2^32 - 1) throws MalformedFrameError: after it nothing says where the
 * next frame starts, and the caller must drop the link.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private size = 0;
  /** Bytes of a skipped frame still to come and be discarded. */
  private skipping = 0;

  constructor(
    public maxFrame: number,
    private onFrame: (body: Buffer) => void,
    private onSkip: (length: number) => void = () => {},
  ) {}

  push(chunk: Buffer): void {
    if (this.skipping > 0) {
      const n = Math.min(this.skipping, chunk.length);
      this.skipping -= n;
      chunk = chunk.subarray(n);
    }
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.size += chunk.length;
    for (;;) {
      if (this.size === 0) return;
      const head = this.peek(Math.min(this.size, MAX_LENGTH_BYTES));
      let len = 0;
      let shift = 1;
      let i = 0;
      let complete = false;
      for (; i < head.length; i++) {
        const b = head[i];
        len += (b & 0x7f) * shift;
        shift *= 128;
        if ((b & 0x80) === 0) {
          complete = true;
          i++;
          break;
        }
      }
      if (!complete) {
        if (head.length >= MAX_LENGTH_BYTES) throw new MalformedFrameError("malformed frame length");
        return; // wait for the rest of the varint
      }
      if (len > 0xffffffff) throw new MalformedFrameError(`malformed frame length ${len}`);
      if (len > this.maxFrame) {
        this.drop(i);
        const buffered = Math.min(this.size, len);
        this.drop(buffered);
        this.skipping = len - buffered;
        this.onSkip(len);
        continue;
      }
      if (this.size < i + len) return; // wait for the rest of the frame
      const all = this.take(i + len);
      this.onFrame(all.subarray(i));
    }
  }

  reset(): void {
    this.chunks = [];
    this.size = 0;
    this.skipping = 0;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n);
    // merge only the few leading chunks that hold the n bytes, not the whole buffer
    let k = 0;
    for (let got = 0; got < n; k++) got += this.chunks[k].length;
    const merged = Buffer.concat(this.chunks.slice(0, k));
    this.chunks.splice(0, k, merged);
    return merged.subarray(0, n);
  }

  /** Discards n buffered bytes (n <= size) without copying them. */
  private drop(n: number): void {
    this.size -= n;
    while (n > 0) {
      const first = this.chunks[0];
      if (first.length <= n) {
        n -= first.length;
        this.chunks.shift();
      } else {
        this.chunks[0] = first.subarray(n);
        n = 0;
      }
    }
  }

  /** Removes n buffered bytes (n <= size): a view when one chunk holds them, else one copy of exactly n bytes. */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    this.size -= n;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    for (let off = 0; off < n; ) {
      const c = this.chunks[0];
      const m = Math.min(c.length, n - off);
      c.copy(out, off, 0, m);
      off += m;
      if (m === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(m);
    }
    return out;
  }
}
