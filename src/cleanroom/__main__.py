from cleanroom.cli.main import main

main()
