"""`python -m services.rag_logger` runs the same CLI as `mld-rag-logger`."""

from services.rag_logger.cli import main

if __name__ == "__main__":
    main()
