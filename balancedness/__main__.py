from balancedness.cli import main

main()
