/**
 * classifySendError over errors built the way kafkajs (and, at the end, @platformatic/kafka) builds them: its own error
 * classes and constructors, protocol errors made from the broker's error codes by
 * kafkajs' createErrorFromCode, wrapped by its retrier (pure, no broker).
 */
import { createRequire } from 'node:module';
import t from 'tap';
import kafkajs from 'kafkajs';
import * as plt from '@platformatic/kafka';
import { DeadlineError } from '../agent/deadline.ts';
import { classifySendError, describeKafkaError } from '../agent/kafka/classify.ts';

type KafkaError = Error & { type?: string; retriable?: boolean; cause?: unknown };
/**
 * kafkajs' error classes as it exports them at run time; its type declarations leave
 * out constructor arguments the library itself passes (e.g. `cause`).
 */
const K = kafkajs as unknown as Record<string, new (...args: unknown[]) => KafkaError>;
const require = createRequire(import.meta.url);
// kafkajs' own table of broker error codes (what a produce response carries).
const { createErrorFromCode } = require('kafkajs/src/protocol/error.js') as {
  createErrorFromCode(code: number): KafkaError;
};

const CODE = {
  UNKNOWN_TOPIC_OR_PARTITION: 3,
  NOT_LEADER_FOR_PARTITION: 6,
  REQUEST_TIMED_OUT: 7,
  MESSAGE_TOO_LARGE: 10,
  INVALID_TOPIC_EXCEPTION: 17,
  RECORD_LIST_TOO_LARGE: 18,
  TOPIC_AUTHORIZATION_FAILED: 29,
  POLICY_VIOLATION: 44,
  INVALID_RECORD: 87,
} as const;

/** Refusals retrying will not fix. */
const PERMANENT = [
  'MESSAGE_TOO_LARGE',
  'RECORD_LIST_TOO_LARGE',
  'INVALID_TOPIC_EXCEPTION',
  'POLICY_VIOLATION',
  'INVALID_RECORD',
] as const;

/** As kafkajs' retrier rejects: retriable errors after the last retry, others at once. */
function afterRetrier(e: KafkaError): Error {
  return e.retriable
    ? new K.KafkaJSNumberOfRetriesExceeded(e, { retryCount: 3, retryTime: 2000 })
    : new K.KafkaJSNonRetriableError(e, { cause: e });
}

t.test('the broker error codes are real kafkajs protocol errors', async (tt) => {
  const e = createErrorFromCode(CODE.MESSAGE_TOO_LARGE);
  tt.ok(e instanceof kafkajs.KafkaJSProtocolError);
  tt.equal(e.retriable, false);
  tt.equal(e.type, 'MESSAGE_TOO_LARGE');
  tt.equal(new K.KafkaJSProtocolError(e).type, 'MESSAGE_TOO_LARGE', 'the public constructor');
});

t.test('permanent refusals: dead-lettered with the Kafka error type', async (tt) => {
  for (const type of PERMANENT) {
    const bare = createErrorFromCode(CODE[type]);
    tt.same(classifySendError(bare), { kind: 'permanent', type }, `${type} bare`);
    tt.same(classifySendError(afterRetrier(bare)), { kind: 'permanent', type }, `${type} wrapped`);
  }
});

t.test('unknown topic and missing ACL: a grace, with the type as the reason', async (tt) => {
  for (const type of ['UNKNOWN_TOPIC_OR_PARTITION', 'TOPIC_AUTHORIZATION_FAILED'] as const) {
    const wrapped = afterRetrier(createErrorFromCode(CODE[type]));
    tt.same(classifySendError(wrapped), { kind: 'unknown-topic', type }, type);
  }
});

t.test('timeouts: kafkajs request timeouts and our own deadline', async (tt) => {
  const req = new K.KafkaJSRequestTimeoutError('Request Produce(key: 0, version: 7) timed out', {
    broker: 'localhost:9092',
    correlationId: 12,
    createdAt: 0,
    sentAt: 0,
    pendingDuration: 30_000,
  });
  tt.same(classifySendError(req), { kind: 'timeout', type: null });
  tt.same(classifySendError(afterRetrier(req)), { kind: 'timeout', type: null }, 'after retries');
  tt.same(classifySendError(new DeadlineError(35_000)), { kind: 'timeout', type: null });
  tt.same(
    classifySendError(createErrorFromCode(CODE.REQUEST_TIMED_OUT)),
    { kind: 'transient', type: null },
    'a broker-side REQUEST_TIMED_OUT is an answer, retried as any other',
  );
});

t.test('everything else is transient', async (tt) => {
  const cases: [string, unknown][] = [
    ['leader moved', afterRetrier(createErrorFromCode(CODE.NOT_LEADER_FOR_PARTITION))],
    [
      'connection refused',
      afterRetrier(
        new K.KafkaJSConnectionError('Connection error: connect ECONNREFUSED', {
          broker: 'localhost:9092',
          code: 'ECONNREFUSED',
        }),
      ),
    ],
    ['SASL failure', new K.KafkaJSSASLAuthenticationError('SASL PLAIN authentication failed')],
    ['no broker', new K.KafkaJSNoBrokerAvailableError()],
    ['a plain Error', new Error('boom')],
    ['not an error', 'a string'],
    ['nothing', undefined],
  ];
  for (const [what, e] of cases)
    tt.same(classifySendError(e), { kind: 'transient', type: null }, what);
});

t.test(
  'aggregates: a refusal anywhere wins, a permanent one over one that may heal',
  async (tt) => {
    const agg = (...errors: Error[]) => new K.KafkaJSAggregateError('several failed', errors);
    const unknown = createErrorFromCode(CODE.UNKNOWN_TOPIC_OR_PARTITION);
    const tooLarge = createErrorFromCode(CODE.MESSAGE_TOO_LARGE);
    const timeout = new K.KafkaJSRequestTimeoutError('timed out', {
      broker: 'b:9092',
      correlationId: 1,
      createdAt: 0,
      sentAt: 0,
      pendingDuration: 1,
    });
    tt.same(classifySendError(agg(unknown, tooLarge)), {
      kind: 'permanent',
      type: 'MESSAGE_TOO_LARGE',
    });
    tt.same(classifySendError(agg(timeout, unknown)), {
      kind: 'unknown-topic',
      type: 'UNKNOWN_TOPIC_OR_PARTITION',
    });
    tt.same(classifySendError(agg(new Error('x'), timeout)), { kind: 'timeout', type: null });
  },
);

t.test(
  'describeKafkaError: one line per distinct message, led by the security hint',
  async (tt) => {
    const e = afterRetrier(createErrorFromCode(CODE.UNKNOWN_TOPIC_OR_PARTITION));
    // The protocol error's message repeats its wrapper's: shown once.
    tt.equal(
      describeKafkaError(e),
      'KafkaJSNumberOfRetriesExceeded: This server does not host this topic-partition',
    );
    const sasl = new K.KafkaJSSASLAuthenticationError('SASL PLAIN authentication failed');
    tt.match(
      describeKafkaError(afterRetrier(sasl)),
      /^authentication failed: Kafka refused the SASL/,
    );
  },
);

// @platformatic/kafka (KEDGE_KAFKA_CLIENT=platformatic): its own error classes, built the
// way its producer builds them (ResponseError from a produce answer's error codes,
// MultipleErrors from its retry loop).
t.test('@platformatic/kafka errors classify like kafkajs ones', async (tt) => {
  const retried = (...errors: Error[]) => new plt.MultipleErrors('produce failed 4 times.', errors);
  const answer = (code: number) =>
    new plt.ResponseError(0, 11, { '/responses/0/partitionResponses/0': [code, null] }, {});
  for (const type of PERMANENT) {
    tt.same(classifySendError(answer(CODE[type])), { kind: 'permanent', type }, `${type}`);
    tt.same(classifySendError(retried(answer(CODE[type]))), { kind: 'permanent', type });
  }
  tt.same(
    classifySendError(retried(answer(CODE.TOPIC_AUTHORIZATION_FAILED))),
    { kind: 'unknown-topic', type: 'TOPIC_AUTHORIZATION_FAILED' },
    'a missing ACL: a grace',
  );
  // What its metadata call makes of UNKNOWN_TOPIC_OR_PARTITION (the protocol error is dropped).
  tt.same(
    classifySendError(new plt.UserError('Unknown topic site.nope.')),
    { kind: 'unknown-topic', type: 'UNKNOWN_TOPIC_OR_PARTITION' },
    'an unknown topic: a grace',
  );
  tt.same(
    classifySendError(new plt.UserError('Failed to serialize a message.')),
    { kind: 'transient', type: null },
    'any other UserError is no refusal',
  );
  const requestTimeout = new plt.TimeoutError('Request timed out', { canRetry: true });
  tt.same(classifySendError(retried(requestTimeout, requestTimeout)), {
    kind: 'timeout',
    type: null,
  });
  tt.same(
    classifySendError(retried(new plt.TimeoutError('Connection to 10.0.0.1:9092 timed out.'))),
    { kind: 'transient', type: null },
    'a connection attempt that timed out is a connection error, as with kafkajs',
  );
  tt.same(
    classifySendError(retried(answer(CODE.NOT_LEADER_FOR_PARTITION))),
    { kind: 'transient', type: null },
    'leader moved',
  );
  tt.same(classifySendError(new plt.NetworkError('Connection closed')), {
    kind: 'transient',
    type: null,
  });
  tt.same(classifySendError(retried(requestTimeout, answer(CODE.MESSAGE_TOO_LARGE))), {
    kind: 'permanent',
    type: 'MESSAGE_TOO_LARGE',
  });
  tt.match(describeKafkaError(answer(CODE.MESSAGE_TOO_LARGE)), /MESSAGE_TOO_LARGE: /);
  tt.match(
    describeKafkaError(retried(answer(58))), // SASL_AUTHENTICATION_FAILED
    /^authentication failed: Kafka refused the SASL/,
  );
  tt.match(
    describeKafkaError(retried(answer(33))), // UNSUPPORTED_SASL_MECHANISM
    /^authentication failed: Kafka does not offer KEDGE_KAFKA_SASL_MECHANISM/,
  );
});
