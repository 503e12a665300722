"""Item text: the text encoder, cached item embeddings and their Feast features (issue 13).

* :mod:`seqrec.text.encoder`: :class:`~seqrec.text.encoder.TextEncoder`, a local Hugging Face
  checkpoint with mean pooling + L2 normalisation (default: the packaged all-MiniLM-L6-v2);
* :mod:`seqrec.text.embed`: :func:`~seqrec.text.embed.embed_items`, embeddings cached in SQL by
  (encoder, text hash);
* :mod:`seqrec.text.features`: the ``item_text_v1`` feature view, online reads for serving
  and the vocabulary-aligned ``[n_items, dim]`` matrix for training.
"""
