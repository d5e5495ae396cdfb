export { IngestError } from '../errors.ts';
