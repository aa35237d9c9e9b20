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

export class FrameTooLargeError extends Error {}

/**
 * Streaming frame reader: feed it socket chunks, it calls onFrame with each
 * complete frame body. Partial frames wait for more data. A length over
 * maxFrame throws FrameTooLargeError (the link must then be dropped: the
 * stream cannot be resynchronised). A bad varint also throws.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private size = 0;

  constructor(public maxFrame: number, private onFrame: (body: Buffer) => void) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    for (;;) {
      if (this.size === 0) return;
      const head = this.peek(Math.min(this.size, 10));
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
        if (head.length >= 10) throw new FrameTooLargeError("malformed frame length");
        return; // wait for the rest of the varint
      }
      if (len > this.maxFrame) throw new FrameTooLargeError(`frame of ${len} bytes exceeds ${this.maxFrame}`);
      if (this.size < i + len) return; // wait for the rest of the frame
      const all = this.take(i + len);
      this.onFrame(all.subarray(i));
    }
  }

  reset(): void {
    this.chunks = [];
    this.size = 0;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n);
    const merged = Buffer.concat(this.chunks);
    this.chunks = [merged];
    return merged.subarray(0, n);
  }

  private take(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    const first = this.chunks[0];
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.size -= n;
    return out;
  }
}
