export * from './subjects.js';
export * from './wire.js';
export * from './codec.js';
export * from './search.js';
