from dynamicdet_cli.cli import main

main()
