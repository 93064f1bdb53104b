"""The bundled trainer: two-stage mPLUG-Owl training on datagen's webdataset shards.

    datagen train recipes/train/stage1_tiny.yaml [--set optim.lr=3e-4] [--out DIR] [--no-resume]
    datagen train recipes/train/stage2_tiny.yaml
    torchrun --nproc_per_node=8 -m datagen.train.cli train recipes/train/stage2_mplug_owl.yaml
    datagen eval out/train/stage2_tiny --data out/demo [--pope-sampling adversarial]
    datagen chat out/train/stage2_tiny --image photo.jpg ["question"]
    datagen export-model out/train/stage2_tiny out/owl-hf [--adapter]

One module per concern (torchtune/nanoGPT style, no registries):

- ``config``     pydantic configs, YAML + ``--set`` overrides, errors with file and key path
- ``tokenizer``  a tokenizer by name, or a byte-level BPE trained on the shard texts (offline)
- ``template``   mPLUG-Owl "Human:/AI:" text or the tokenizer's chat template -> ids + label mask,
                 tokenised once with character offsets
- ``data``       webdataset pipeline: resampled shards, node/worker split, expansion of every
                 conversation, text-only mixing, decode + tokenise in workers, length grouping,
                 with_epoch, exact skip; the image transform (squash or pad, never crop)
- ``model``      open_clip ViT -> visual abstractor -> Hugging Face causal LM (+ peft LoRA)
- ``hub``        fail fast when named weights are neither local, cached nor reachable
- ``checkpoint`` what a checkpoint holds; exact resume
- ``loop``       one stage: grad accumulation, clipping, cosine schedule, bf16, DDP
- ``eval``       held-out loss and POPE (first differing reply token, and parsed generations)
- ``inference``  load a checkpoint or export; prompts through the training code; generation
- ``export``     a checkpoint -> HF causal LM (LoRA merged or adapter) + ViT/abstractor safetensors
- ``synthetic``  tiny shards in the exact layout, for tests and benches
- ``cli``        ``train_main``, ``eval_main``, ``chat_main``, ``export_main`` (argv -> exit code)
"""
