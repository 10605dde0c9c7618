/**
 * The JSON Schemas of the base actions (src/agent/base-actions.ts). They are compiled ahead of
 * time into src/agent/generated/base-action-validators.ts (`npm run gen:schemas`), so a module
 * agent's first create-module loads neither ajv nor its compiler (80-250 ms on a node, at every
 * new instance); a module's own validate-input.json still replaces them and is compiled at run time.
 */
export const BASE_ACTION_SCHEMAS = {
  createModuleInput: {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title: 'create-module input',
    type: 'object',
    properties: {
      volumes: {
        type: 'object',
        description: 'Optional mapping of application volume names to filesystem base paths.',
        additionalProperties: { type: 'string', pattern: '^/.+$' },
      },
      images: { type: 'array', items: { type: 'string', minLength: 1 }, uniqueItems: true },
    },
  },
  getStatusOutput: {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title: 'get-status output',
    type: 'object',
    required: ['instance', 'ui_name', 'node', 'node_ui_name', 'services', 'images', 'volumes'],
    properties: {
      instance: { type: 'string' },
      ui_name: { type: 'string' },
      node: { type: 'string' },
      node_ui_name: { type: 'string' },
      services: {
        type: 'array',
        items: { type: 'object', required: ['name', 'active', 'enabled', 'failed'], properties: { name: { type: 'string' }, active: { type: 'boolean' }, enabled: { type: 'boolean' }, failed: { type: 'boolean' } } },
      },
      images: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, size: { type: 'string' }, created: { type: 'string' } } } },
      volumes: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, mount: { type: 'string' }, created: { type: 'string' } } } },
    },
  },
  updateModuleInput: {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title: 'update-module input',
    type: 'object',
    properties: {
      module_url: { type: 'string', minLength: 1 },
      force: { type: 'boolean' },
    },
  },
} as const;
