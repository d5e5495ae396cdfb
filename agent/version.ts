import pkg from '../package.json' with { type: 'json' };

export const KEDGE_VERSION: string = pkg.version;
