from jobwire.cli.main import app

app(prog_name="jobwire")
