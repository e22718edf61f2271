from loadsim.cli import main

main()
