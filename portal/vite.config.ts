import path from "node:path";
import { fileURLToPath } from "node:url";

import { defineConfig } from "vite";

const here = path.dirname(fileURLToPath(import.meta.url));

// The SDK is consumed from source; its runtime deps resolve from the portal's node_modules
// (dedupe) so one copy of Connect/Protobuf-ES ends up in the bundle.
export default defineConfig({
  base: "/",
  resolve: {
    alias: {
      "@platform/sdk": path.resolve(here, "../clients/typescript/src/index.ts"),
    },
    dedupe: ["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-web"],
  },
  esbuild: { jsx: "automatic" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
  },
});
