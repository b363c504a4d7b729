// The page is served from any folder (`seqmnist demo` puts the model beside it as ./model.onnx),
// so every URL in the build is relative. onnxruntime-web's .wasm binary is imported as an asset
// (src/model.ts), which copies it into dist/assets/: the page needs no CDN.
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // onnxruntime-web's JavaScript alone is ~400 kB; the warning says nothing useful here.
    chunkSizeWarningLimit: 1024,
  },
});
