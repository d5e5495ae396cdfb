/**
 * Entry point of the single executable: esbuild bundles this file (and with it
 * the whole agent) into the one CommonJS script the SEA blob carries.
 * Import order is evaluation order: the setup must run before the CLI starts.
 */
import './sea-setup.ts';
import '../../agent/cli.ts';
