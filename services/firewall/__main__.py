"""`python -m services.firewall` is `mld-firewall`."""

from services.firewall.cli import main

if __name__ == "__main__":
    main()
