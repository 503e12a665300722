"""Item text: the text encoder, cached item embeddings and their Feast features (issue 13).

* :mod:`seqrec.text.encoder`: :class:`~seqrec.text.encoder.TextEncoder`, a local Hugging Face
  checkpoint with mean pooling + L2 normalisation (default: the packaged all-MiniLM-L6-v2);
* :mod:`seqrec.text.embed`: :func:`~seqrec.text.embed.embed_items`, embeddings cached in SQL by
  (encoder, text hash);
* :mod:`seqrec.text.features`: the ``item_text_v1`` feature view, online reads for serving
  and the vocabulary-aligned ``[n_items, dim]`` matrix for training;
* :mod:`seqrec.text.titles`: item display titles aligned with the vocabulary, and
  :mod:`seqrec.text.render`: a sequence rendered as text ("viewed Toy Story (1995) [Animation]
  3 days ago; ..."), for models that read behaviour as text (the ``text-bert`` plugin);
* :mod:`seqrec.text.fusion`: ids fused with text in next-item models (``item_text=true``),
  whose hyperparameters and defaults are :data:`seqrec.text.params.TEXT_DEFAULTS`.
"""
