// The client's one source is the file the server serves at /sluiceway.js; this re-export makes it the
// package entry point for npm and the tests here (it imports its vendored SSE parser relatively).
export * from "../src/sluiceway/web/sluiceway.js";
