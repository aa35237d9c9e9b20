// The service protocol: static protobuf code generated at build time from
// proto/linkd.proto by protobufjs's own generator (pbjs -t static-module, into
// dist/linkd_pb.js: build output, never committed), and the framing (a varint
// length, then one ServiceMessage).
//
// Two ways in and out:
// - encodeFrame / decodeFrame (public): plain objects as protobufjs's
//   fromObject / toObject give them (64-bit ints as strings, defaults filled).
// - the service's hot path: decodeMessage gives the generated message object
//   itself (no conversion: fields unset are read from the prototype's
//   defaults, 64-bit ints are Long), and FrameWriter encodes plain objects
//   with the generated encoders straight into one buffer per event-loop turn.

// eslint-disable-next-line @typescript-eslint/no-var-requires
const pb: any = require("./linkd_pb");
// eslint-disable-next-line @typescript-eslint/no-var-requires
const $protobuf: any = require("protobufjs/minimal");

const ServiceMessage: any = pb.linkd.ServiceMessage;

/** A decoded frame as a plain object: camelCase fields, 64-bit ints as strings, bytes as Buffers. */
export type Frame = { [key: string]: any; message?: string };

const toObjectOptions = {
  longs: String,
  enums: Number,
  defaults: true,
  arrays: true,
  oneofs: true,
};

/** One frame from a plain object such as {registerService: {...}}: length-delimited bytes. */
export function encodeFrame(obj: Frame): Buffer {
  const msg = ServiceMessage.fromObject(obj);
  const bytes: Uint8Array = ServiceMessage.encodeDelimited(msg).finish();
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Decodes one ServiceMessage body (without its length prefix). Throws on malformed input. */
export function decodeFrame(body: Uint8Array): Frame {
  return ServiceMessage.toObject(ServiceMessage.decode(body), toObjectOptions) as Frame;
}

/**
 * Decodes one ServiceMessage body into the generated message object (no
 * conversion to a plain object): the set member of the oneof is an own
 * property, every other field reads its default from the prototype.
 */
export function decodeMessage(body: Uint8Array): any {
  return ServiceMessage.decode(body);
}

/**
 * protobufjs's Buffer writer, except that bytes() also takes a JS string,
 * written as its UTF-8 text (protobuf's wire format is the same for bytes and
 * string): JSON payloads go into the frame without a Buffer of their own.
 * Only the service's own frames go through it; encodeFrame keeps
 * protobufjs's meaning (a string for bytes is base64).
 */
const BufferWriter: any = $protobuf.BufferWriter;
function TextBytesWriter(this: any): void {
  BufferWriter.call(this);
}
TextBytesWriter.prototype = Object.create(BufferWriter.prototype);
TextBytesWriter.prototype.constructor = TextBytesWriter;
(TextBytesWriter as any).alloc = (n: number) => BufferWriter.alloc(n);
TextBytesWriter.prototype.bytes = function (this: any, value: unknown) {
  return typeof value === "string" ? this.string(value) : BufferWriter.prototype.bytes.call(this, value);
};

/**
 * Frames encoded for the link, gathered into one buffer: append() encodes a
 * ServiceMessage (a plain object with the generated classes' field names and
 * types) with its length prefix; take() hands over everything appended since
 * the last take() as one Buffer. One write per event-loop turn instead of one
 * per frame; no intermediate Buffer per frame.
 */
export class FrameWriter {
  private w: any = new (TextBytesWriter as any)();

  /** Frames appended since the last take(). */
  count = 0;

  /**
   * Appends one frame. Returns its length with the length prefix, or -1 (and
   * appends nothing) when that is over maxFrame (0: no limit).
   */
  append(frame: Record<string, unknown>, maxFrame = 0): number {
    const w = this.w;
    w.fork();
    try {
      ServiceMessage.encode(frame, w);
    } catch (err) {
      w.reset();
      throw err;
    }
    const n: number = w.len;
    const total = n + (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5);
    if (maxFrame > 0 && total > maxFrame) {
      w.reset();
      return -1;
    }
    w.ldelim();
    this.count++;
    return total;
  }

  /** Bytes appended and not yet taken. */
  get length(): number {
    return this.w.len;
  }

  /** Everything appended since the last take(), as one Buffer (null if nothing). */
  take(): Buffer | null {
    if (this.count === 0) return null;
    this.count = 0;
    const buf = this.w.finish() as Buffer;
    this.w = new (TextBytesWriter as any)();   // finish() leaves the operations in place: start afresh
    return buf;
  }

  /** Drops what was appended (the link went away). */
  clear(): void {
    if (this.count === 0) return;
    this.count = 0;
    this.w = new (TextBytesWriter as any)();
  }
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
    if (this.size === 0) {
      // nothing buffered (the usual case): frames are cut straight out of the chunk
      const len = chunk.length;
      let off = 0;
      while (off < len) {
        let n = 0;
        let shift = 1;
        let i = off;
        let complete = false;
        const lim = Math.min(len, off + MAX_LENGTH_BYTES);
        while (i < lim) {
          const b = chunk[i++];
          n += (b & 0x7f) * shift;
          shift *= 128;
          if ((b & 0x80) === 0) {
            complete = true;
            break;
          }
        }
        if (!complete) {
          if (i - off >= MAX_LENGTH_BYTES) throw new MalformedFrameError("malformed frame length");
          break; // the rest of the varint is still to come
        }
        if (n > 0xffffffff) throw new MalformedFrameError(`malformed frame length ${n}`);
        if (n > this.maxFrame) {
          const buffered = Math.min(len - i, n);
          this.skipping = n - buffered;
          off = i + buffered;
          this.onSkip(n);
          if (this.skipping > 0) return;
          continue;
        }
        if (len - i < n) break; // the rest of the frame is still to come
        off = i + n;
        this.onFrame(chunk.subarray(i, off));
      }
      if (off < len) {
        this.chunks.push(off ? chunk.subarray(off) : chunk);
        this.size = len - off;
      }
      return;
    }
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
