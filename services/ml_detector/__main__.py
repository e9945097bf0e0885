from services.ml_detector.cli import main

main()
