"""`python -m lib.serving ...`: run the model service."""

from lib.serving.service import main

if __name__ == "__main__":
    main()
