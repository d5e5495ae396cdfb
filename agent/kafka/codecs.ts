/**
 * Compression codecs for kafkajs without native addons, so the single
 * executable carries all of them:
 * - gzip: built into kafkajs (Node's zlib);
 * - zstd: Node's own zlib (Node >= 22.15 / 23.8);
 * - snappy: snappyjs (pure JavaScript), raw Snappy like librdkafka sends;
 * - lz4: the LZ4 *frame* format Kafka expects, written here around lz4js's
 *   pure-JavaScript block compressor (lz4js's own frame writer makes dependent
 *   4 MiB blocks, which Kafka's Java side refuses).
 * kafkajs keeps its codec table as module state; registering is idempotent.
 */
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import { promisify } from 'node:util';
import type { Compression } from '../config.ts';
import { CodecUnavailableError, CorruptCompressedDataError } from '../errors.ts';
// kafkajs is CommonJS: a default import works in Node ESM and bundles with esbuild.
import kafkajs from 'kafkajs';

// Literal requires only: the build turns them into plain requires esbuild bundles
// (scripts/build/bundle.ts). Required lazily, when the codec is chosen: lz4js
// allocates 5 MiB of scratch space when it loads.
const require = createRequire(import.meta.url);

const zstdDecompress = promisify(zlib.zstdDecompress);

/** What kafkajs calls: `compress` gets its records encoder, `decompress` the compressed bytes. */
interface KafkajsCodec {
  compress(encoder: { buffer: Buffer }): Promise<Buffer>;
  decompress(buffer: Buffer): Promise<Buffer>;
}

/** One codec on plain buffers (tests and the benchmark use it; the kafkajs codec wraps it). */
export interface Codec {
  compress(input: Buffer): Promise<Buffer>;
  decompress(input: Buffer): Promise<Buffer>;
}

/**
 * One zstd compressor reused for every batch, each batch ending its own frame
 * (ZSTD_e_end), so every record batch decodes on its own. A fresh compressor per
 * batch costs ~2 ms of setup and its native state (~1 MB) is freed only when V8
 * collects the zlib object: measured +70 MB RSS while draining a backlog.
 * Calls are serialised; the forwarder sends one batch at a time anyway.
 */
class ReusedZstd {
  private z: zlib.ZstdCompress | null = null;
  private tail: Promise<unknown> = Promise.resolve();

  compress(input: Buffer): Promise<Buffer> {
    const run = () =>
      new Promise<Buffer>((resolve, reject) => {
        const z = (this.z ??= zlib.createZstdCompress({
          params: { [zlib.constants.ZSTD_c_compressionLevel]: 3 },
        }));
        const chunks: Buffer[] = [];
        const onData = (c: Buffer) => chunks.push(c);
        const onError = (e: Error) => {
          cleanup();
          this.z = null; // a broken stream is not reused
          reject(e);
        };
        const cleanup = () => {
          z.off('data', onData);
          z.off('error', onError);
        };
        z.on('data', onData);
        z.once('error', onError);
        z.write(input);
        // As ws does for permessage-deflate: the flush callback runs after the flushed output was emitted.
        z.flush(zlib.constants.ZSTD_e_end, () => {
          cleanup();
          resolve(Buffer.concat(chunks));
        });
      });
    const p = this.tail.then(run, run);
    this.tail = p.catch(() => undefined);
    return p;
  }
}

// ---------------------------------------------------------------- snappy

interface SnappyJs {
  compress(input: Buffer): Buffer;
  uncompress(input: Buffer, maxLength?: number): Buffer;
}

/** The header of xerial snappy-java's stream format, which Java producers write. */
const XERIAL_MAGIC = Buffer.from([0x82, 0x53, 0x4e, 0x41, 0x50, 0x50, 0x59, 0x00]);
const XERIAL_HEADER = 16; // magic, version, compatible version

export { CorruptCompressedDataError };

/**
 * Raw Snappy, as librdkafka produces it; both librdkafka and the Java broker
 * (xerial SnappyInputStream) read raw Snappy. Decompress also reads the xerial
 * framing, which Java clients write.
 */
function snappyCodec(): Codec {
  const snappy = require('snappyjs') as SnappyJs;
  return {
    compress: async (input) => snappy.compress(input),
    decompress: async (input) => {
      if (input.length < XERIAL_HEADER || !input.subarray(0, 8).equals(XERIAL_MAGIC))
        return snappy.uncompress(input);
      const parts: Buffer[] = [];
      for (let at = XERIAL_HEADER; at < input.length; ) {
        if (at + 4 > input.length)
          throw new CorruptCompressedDataError('snappy', 'xerial chunk length cut short');
        const len = input.readUInt32BE(at);
        at += 4;
        if (at + len > input.length)
          throw new CorruptCompressedDataError('snappy', 'xerial chunk cut short');
        parts.push(snappy.uncompress(input.subarray(at, at + len)));
        at += len;
      }
      return Buffer.concat(parts);
    },
  };
}

// ---------------------------------------------------------------- lz4

interface Lz4Js {
  compressBound(n: number): number;
  compressBlock(
    src: Uint8Array,
    dst: Uint8Array,
    sIndex: number,
    sLength: number,
    hashTable: Uint32Array,
  ): number;
  decompress(src: Uint8Array, maxSize?: number): Uint8Array;
}
interface Xxh32 {
  hash(seed: number, src: Uint8Array, index: number, length: number): number;
}

const LZ4_MAGIC = 0x184d2204;
/** FLG: version 01, independent blocks (Kafka's Java LZ4 reader refuses dependent ones), no checksums. */
const LZ4_FLG = 0x60;
/** BD: 64 KiB maximum block size, what Kafka's Java client and librdkafka write. */
const LZ4_BD = 0x40;
/**
 * Input bytes per block, 16 short of the 64 KiB maximum. lz4js may start a block's
 * last match 10 or 11 bytes before its end, where the LZ4 spec asks for 12; the
 * reference decoder's end-of-buffer checks (librdkafka, lz4-java) can only trip
 * on that when a block fills its 64 KiB output buffer exactly, which a block
 * this size never does.
 */
const LZ4_BLOCK = 65536 - 16;
const LZ4_UNCOMPRESSED = 0x80000000;

function lz4Codec(): Codec {
  const lz4 = require('lz4js') as Lz4Js;
  const xxh = require('lz4js/xxh32.js') as Xxh32;
  const scratch = new Uint8Array(lz4.compressBound(LZ4_BLOCK));
  const table = new Uint32Array(1 << 16);
  const header = Buffer.from([0x04, 0x22, 0x4d, 0x18, LZ4_FLG, LZ4_BD, 0]);
  header[6] = (xxh.hash(0, header, 4, 2) >>> 8) & 0xff;
  return {
    compress: async (input) => {
      const blocks = Math.ceil(input.length / LZ4_BLOCK);
      // Worst case: every block stored uncompressed, plus its size word and the end mark.
      const out = Buffer.allocUnsafe(header.length + 4 * blocks + input.length + 4);
      header.copy(out, 0);
      let o = header.length;
      for (let at = 0; at < input.length; at += LZ4_BLOCK) {
        const len = Math.min(LZ4_BLOCK, input.length - at);
        table.fill(0); // independent blocks: no match may reach into the previous one
        const n = lz4.compressBlock(input, scratch, at, len, table);
        if (n > 0 && n < len) {
          out.writeUInt32LE(n, o);
          out.set(scratch.subarray(0, n), o + 4);
          o += 4 + n;
        } else {
          out.writeUInt32LE((LZ4_UNCOMPRESSED | len) >>> 0, o);
          input.copy(out, o + 4, at, at + len);
          o += 4 + len;
        }
      }
      out.writeUInt32LE(0, o); // end mark
      return out.subarray(0, o + 4);
    },
    decompress: async (input) => {
      if (input.length < 7 || input.readUInt32LE(0) !== LZ4_MAGIC)
        throw new CorruptCompressedDataError('lz4', 'no LZ4 frame magic');
      const d = lz4.decompress(input);
      return Buffer.from(d.buffer, d.byteOffset, d.length);
    },
  };
}

// ---------------------------------------------------------------- registration

export { CodecUnavailableError };

// kafkajs' codec table is module state, so the codecs are too: one per process.
const registered = new Map<number, () => KafkajsCodec>();

function adapt(c: Codec): () => KafkajsCodec {
  const k: KafkajsCodec = {
    compress: (e) => c.compress(e.buffer),
    decompress: (b) => c.decompress(b),
  };
  return () => k;
}

function makeCodec(type: number): Codec {
  const { CompressionTypes } = kafkajs;
  switch (type) {
    case CompressionTypes.ZSTD: {
      const z = new ReusedZstd();
      return { compress: (b) => z.compress(b), decompress: (b) => zstdDecompress(b) };
    }
    case CompressionTypes.Snappy:
      return snappyCodec();
    case CompressionTypes.LZ4:
      return lz4Codec();
    default:
      throw new Error(`no codec for kafkajs compression type ${type}`);
  }
}

/** Registers what `compression` needs with kafkajs and returns kafkajs' codec id. */
export function kafkaCompression(compression: Compression): number {
  const { CompressionTypes, CompressionCodecs } = kafkajs;
  const type = (
    {
      none: CompressionTypes.None,
      gzip: CompressionTypes.GZIP,
      snappy: CompressionTypes.Snappy,
      lz4: CompressionTypes.LZ4,
      zstd: CompressionTypes.ZSTD,
    } as Record<string, number | undefined>
  )[compression];
  if (type === undefined) throw new CodecUnavailableError(compression);
  if (type === CompressionTypes.None || type === CompressionTypes.GZIP) return type; // gzip: kafkajs' own
  let factory = registered.get(type);
  if (!factory) registered.set(type, (factory = adapt(makeCodec(type))));
  (CompressionCodecs as Record<number, () => KafkajsCodec>)[type] = factory;
  return type;
}

/**
 * The codec kafkajs uses for `compression` (registering it), on plain buffers:
 * what the benchmark measures ratios with and the tests decode with.
 */
export function codecFor(compression: Exclude<Compression, 'none'>): Codec {
  const type = kafkaCompression(compression);
  const k = (kafkajs.CompressionCodecs as Record<number, () => KafkajsCodec>)[type]();
  return { compress: (b) => k.compress({ buffer: b }), decompress: (b) => k.decompress(b) };
}
