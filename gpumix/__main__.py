from gpumix.cli.main import main

main()
