"""Weight-only quantization (int8 per output channel, int4 group-wise) and GGUF export for llama.cpp.

- `pack`: the numerics: quantize a weight matrix, dequantize it, pack int4 two to a byte.
- `modules`: `QuantLinear` / `QuantEmbedding`, which hold packed weights and call torch's int8/int4
  weight-only kernels.
- `model`: quantizing a model's state, and building an `OLMo` whose Linear modules are `QuantLinear`.
- `checkpoint`: the quantized checkpoint directory (safetensors + quantization.json), written and read.
- `gguf_export`: a GGUF file in llama.cpp's `olmo` architecture (needs the optional `gguf` package).
What quantizing cost and bought (size, perplexity, speed) is measured by `olmo_cli.eval.quantized`.
"""
