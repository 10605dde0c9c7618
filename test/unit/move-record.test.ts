/** The move records node agents read (`ns8ctl/moves`): only well-formed ones, lists always lists. */
import { parseMoves } from '../../src/node-agent/move/record.js';

test('a record Redis rewrote (an empty list became {}) reads back with empty lists', () => {
  const h = { web1: JSON.stringify({ from: 1, to: 2, state: 'source-ready', volumes: {}, enabled: ['agent.service', 7] }) };
  expect(parseMoves(h, ['web1']).get('web1')).toEqual({ from: 1, to: 2, state: 'source-ready', volumes: [], enabled: ['agent.service'] });
});

test('records of other ids, unknown states, missing nodes and non-JSON are left out', () => {
  const h = {
    a1: JSON.stringify({ from: 1, to: 2, state: 'flying' }),
    b1: JSON.stringify({ to: 2, state: 'requested' }),
    c1: 'not json',
    d1: JSON.stringify({ from: 1, to: 2, state: 'requested' }),
  };
  expect([...parseMoves(h, ['a1', 'b1', 'c1', 'x1']).keys()]).toEqual([]);
  expect(parseMoves(h, ['d1']).get('d1')).toMatchObject({ from: 1, to: 2, state: 'requested' });
});
