"""`python -m services.rag` is `mld-rag`."""

from services.rag.cli import main

main()
