import t from 'tap';
import {
  CodecUnavailableError,
  ConfigError,
  CorruptCompressedDataError,
  IngestError,
  KEDGE_ERROR_CODES,
  KedgeError,
  LogOpenError,
  LogWriteError,
  PinMismatchError,
} from '../agent/errors.ts';

t.test('one catalogue: every error is a KedgeError with a listed code', async (t) => {
  t.equal(new Set(KEDGE_ERROR_CODES).size, KEDGE_ERROR_CODES.length, 'codes are unique');
  const errors: [Error, string, string][] = [
    [new ConfigError(['a']), 'ConfigError', 'KEDGE_CONFIG'],
    [new LogWriteError('w'), 'LogWriteError', 'KEDGE_LOG_WRITE'],
    [new LogWriteError('w', 'KEDGE_DISK_FULL'), 'LogWriteError', 'KEDGE_DISK_FULL'],
    [new LogOpenError('o'), 'LogOpenError', 'KEDGE_LOG_OPEN'],
    [new IngestError(400, 'bad_json', 'x'), 'IngestError', 'KEDGE_INGEST_REFUSED'],
    [
      new CorruptCompressedDataError('lz4', 'x'),
      'CorruptCompressedDataError',
      'KEDGE_CORRUPT_COMPRESSED',
    ],
    [new CodecUnavailableError('brotli'), 'CodecUnavailableError', 'KEDGE_CODEC_UNAVAILABLE'],
    [new PinMismatchError('/c.pem'), 'PinMismatchError', 'KEDGE_PIN_MISMATCH'],
  ];
  for (const [err, name, code] of errors) {
    t.ok(err instanceof KedgeError, `${name} extends KedgeError`);
    t.equal(err.name, name);
    t.equal((err as KedgeError).code, code);
    t.ok(KEDGE_ERROR_CODES.includes((err as KedgeError).code), `${code} is in the catalogue`);
  }
  const cause = new Error('disk');
  t.equal(new LogWriteError('w', 'KEDGE_LOG_WRITE', { cause }).cause, cause, 'cause kept');
});
