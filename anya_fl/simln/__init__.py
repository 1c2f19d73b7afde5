"""`anya-fl simln`: a simulated Lightning network whose routers answer in LND's and Core Lightning's shapes."""
