from flowtrain.train import main

main()
