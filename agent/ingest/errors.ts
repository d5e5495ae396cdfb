/** An ingest request that is refused; `status` is the HTTP status, nothing was stored. */
export class IngestError extends Error {
  readonly status: number;
  readonly error: string;
  readonly detail: string;
  readonly headers: Record<string, string>;
  constructor(status: number, error: string, detail: string, headers: Record<string, string> = {}) {
    super(`${error}: ${detail}`);
    this.name = 'IngestError';
    this.status = status;
    this.error = error;
    this.detail = detail;
    this.headers = headers;
  }
}
