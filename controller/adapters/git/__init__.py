"""Git: the source, the status branch, signing, history (pygit2)."""
