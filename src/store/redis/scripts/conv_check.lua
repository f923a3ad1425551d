-- Whether a new conversation of ARGV[2] could get room now (nothing is changed).
return room(true) or false
