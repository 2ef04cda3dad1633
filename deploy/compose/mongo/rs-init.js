// Initiates the compose replica set once, then waits until it has a primary, so that
// tidemark (which starts after this exits 0) can open change streams at once.
const members = [
  {_id: 0, host: "mongo1:27017", priority: 2},
  {_id: 1, host: "mongo2:27017", priority: 1},
  {_id: 2, host: "mongo3:27017", priority: 1},
];
try {
  rs.status();
  print("replica set rs0 already initiated");
} catch (e) {
  // NotYetInitialized (94) is the only error that means "run rs.initiate".
  if (e.code !== 94) throw e;
  rs.initiate({_id: "rs0", members: members});
  print("replica set rs0 initiated");
}
const deadline = Date.now() + 120 * 1000;
while (!db.hello().primary) {
  if (Date.now() > deadline) {
    print("no primary after 120 s: " + JSON.stringify(rs.status().members.map(m => [m.name, m.stateStr])));
    quit(1);
  }
  sleep(1000);
}
print("primary: " + db.hello().primary);
