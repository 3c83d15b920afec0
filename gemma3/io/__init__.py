"""Files and the Hub: our checkpoints (checkpoints.py), the seed projects' and transformers' state-dict layouts
(layouts.py), tokenizers read from files (tokenizer_files.py), GGUF in and out (gguf.py), Hub downloads
(hub.py), and safe reads and atomic writes (files.py). Every size a file claims is checked before anything is
built. The modules import each other in that order, top to bottom, never back:
checkpoints -> gguf -> tokenizer_files, layouts -> files; hub -> files."""
