/**
 * Compression codecs for kafkajs without native addons: gzip is built into
 * kafkajs, zstd comes from Node's own zlib (Node >= 22.15 / 23.8).
 * kafkajs keeps its codec table as module state; registering is idempotent.
 */
import zlib from 'node:zlib';
import { promisify } from 'node:util';
import type { Compression } from '../config.ts';
// kafkajs is CommonJS: a default import works in Node ESM and bundles with esbuild.
import kafkajs from 'kafkajs';


const zstdCompress = promisify(zlib.zstdCompress);
const zstdDecompress = promisify(zlib.zstdDecompress);

export class CodecUnavailableError extends Error {
  constructor(codec: string) {
    super(`KEDGE_COMPRESSION=${codec} is not available in this build (use zstd, gzip or none)`);
    this.name = 'CodecUnavailableError';
  }
}

/** Registers what `compression` needs and returns kafkajs' codec id. */
export function kafkaCompression(compression: Compression): number {
  const { CompressionTypes, CompressionCodecs } = kafkajs;
  switch (compression) {
    case 'none':
      return CompressionTypes.None;
    case 'gzip':
      return CompressionTypes.GZIP;
    case 'zstd':
      CompressionCodecs[CompressionTypes.ZSTD] = () => ({
        compress: async (encoder: { buffer: Buffer }) => zstdCompress(encoder.buffer, { params: { [zlib.constants.ZSTD_c_compressionLevel]: 3 } }),
        decompress: async (buffer: Buffer) => zstdDecompress(buffer),
      });
      return CompressionTypes.ZSTD;
    default:
      throw new CodecUnavailableError(compression);
  }
}
