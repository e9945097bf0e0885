"""`python -m services.sniffer` is `mld-sniffer`."""

from services.sniffer.cli import main

if __name__ == "__main__":
    main()
