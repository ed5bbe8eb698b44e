"""Single stream straight through llama-cpp-python's ``Llama.generate`` in the bench
process: the baseline a client of Herd is compared with (one request at a time)."""

from __future__ import annotations

import time

import llama_cpp

from bench.common import Config, Stream
from worker.model_files import default_model


class Direct:
    def __init__(self, config: Config) -> None:
        self.llm = llama_cpp.Llama(
            model_path=str(default_model().path),
            n_ctx=config.n_ctx,
            n_batch=config.n_batch,
            n_threads=config.threads,
            n_threads_batch=config.threads,
            flash_attn=False,  # as the worker on a CPU
            verbose=False,
        )
        self._vocab = self.llm._model.vocab

    def close(self) -> None:
        self.llm.close()

    def stream(self, text: str, new_tokens: int) -> Stream:
        """Timed from before tokenizing (the worker tokenizes too) to the last token; the
        first chunk is the first token whose text is not empty, as a client would see."""
        result = Stream(sent=time.perf_counter())
        # tokenized as the worker does a raw prompt: BOS, control tokens parsed
        tokens = self.llm.tokenize(text.encode(), add_bos=True, special=True)
        pending = b""
        for token in self.llm.generate(tokens, temp=0.0, reset=True):
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                break
            result.tokens += 1
            pending += self.llm.detokenize([token])
            try:
                piece = pending.decode()
                pending = b""
            except UnicodeDecodeError:  # a character split over tokens: wait for the rest
                piece = ""
            if piece:
                result.chunks.append(time.perf_counter())
            if result.tokens >= new_tokens:
                break
        result.ended = time.perf_counter()
        return result
